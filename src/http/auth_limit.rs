//! A limit on failed authentications per client address, so that guessing tokens (or
//! a client stuck on a revoked one) costs the database almost nothing: past the limit
//! the API answers `429 too_many_auth_failures` with `Retry-After` before looking
//! anything up.
//!
//! Each address (an IPv6 address by its /64, the block one host usually holds) has a
//! token bucket of `http.max_auth_failures` failures, refilled at that many per
//! minute. Only failures take from it, so a client whose requests succeed is never
//! limited, however many it sends. A request is let through while its address has a
//! failure left and charged once it fails, so concurrent requests may overshoot the
//! limit by at most the requests in flight (`http.max_in_flight_requests`).
//!
//! Memory is bounded whatever the address churn: at most [`MAX_TRACKED`] addresses are
//! tracked; when the table is full, addresses whose bucket has refilled (the same as
//! never seen) are dropped, and if none has, new addresses share one overflow bucket.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Addresses tracked at most.
pub const MAX_TRACKED: usize = 4096;

/// The bucket of one address (or of the overflow).
#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Failures still allowed (fractional while refilling).
    tokens: f64,
    /// When `tokens` was last brought up to date.
    updated: Instant,
}

#[derive(Debug)]
struct Buckets {
    by_client: HashMap<IpAddr, Bucket>,
    overflow: Bucket,
}

/// The failed-authentication limiter.
#[derive(Debug)]
pub struct AuthLimiter {
    capacity: f64,
    per_second: f64,
    buckets: Mutex<Buckets>,
}

impl AuthLimiter {
    /// `per_minute` failures per address, as a burst and as the refill rate.
    pub fn new(per_minute: u32) -> AuthLimiter {
        let capacity = f64::from(per_minute.max(1));
        AuthLimiter {
            capacity,
            per_second: capacity / 60.0,
            buckets: Mutex::new(Buckets {
                by_client: HashMap::new(),
                overflow: Bucket {
                    tokens: capacity,
                    updated: Instant::now(),
                },
            }),
        }
    }

    /// `Ok` if `client` may try to authenticate now, else how long until it may.
    pub fn check(&self, client: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.lock();
        let Buckets {
            by_client,
            overflow,
        } = &mut *buckets;
        let full = by_client.len() >= MAX_TRACKED;
        let bucket = match by_client.get_mut(&key(client)) {
            Some(bucket) => bucket,
            // Unknown addresses have a full bucket, unless they share the overflow.
            None if !full => return Ok(()),
            None => overflow,
        };
        self.refill(bucket, now);
        if bucket.tokens >= 1.0 {
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_second;
            Err(Duration::from_secs_f64(wait.ceil().max(1.0)))
        }
    }

    /// `client` failed to authenticate.
    pub fn charge(&self, client: IpAddr, now: Instant) {
        let mut buckets = self.lock();
        let client = key(client);
        if !buckets.by_client.contains_key(&client) && buckets.by_client.len() >= MAX_TRACKED {
            self.forget_refilled(&mut buckets, now);
        }
        let capacity = self.capacity;
        let Buckets {
            by_client,
            overflow,
        } = &mut *buckets;
        let bucket = if by_client.len() < MAX_TRACKED || by_client.contains_key(&client) {
            by_client.entry(client).or_insert(Bucket {
                tokens: capacity,
                updated: now,
            })
        } else {
            overflow
        };
        self.refill(bucket, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }

    /// Addresses tracked right now (for tests of the memory bound).
    pub fn tracked(&self) -> usize {
        self.lock().by_client.len()
    }

    fn refill(&self, bucket: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * self.per_second).min(self.capacity);
        bucket.updated = now;
    }

    /// Drops every address whose bucket is full again: it is as if never seen.
    fn forget_refilled(&self, buckets: &mut Buckets, now: Instant) {
        buckets.by_client.retain(|_, bucket| {
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens + elapsed * self.per_second < self.capacity
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        // The buckets stay consistent whatever panicked while holding the lock.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The address a bucket belongs to: IPv4 as it is (also when mapped into IPv6), IPv6
/// by its /64.
fn key(client: IpAddr) -> IpAddr {
    match client {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut segments = v6.segments();
                segments[4..].fill(0);
                IpAddr::V6(segments.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("a valid address")
    }

    #[test]
    fn failures_beyond_the_burst_are_refused_until_the_bucket_refills() {
        let limiter = AuthLimiter::new(3);
        let start = Instant::now();
        let client = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(limiter.check(client, start), Ok(()));
            limiter.charge(client, start);
        }
        let wait = limiter
            .check(client, start)
            .expect_err("the burst is used up");
        assert_eq!(
            wait,
            Duration::from_secs(20),
            "3 per minute: one every 20 s"
        );
        // Another address is not affected.
        assert_eq!(limiter.check(ip("192.0.2.2"), start), Ok(()));
        // One failure's worth refills in 20 s.
        assert!(limiter
            .check(client, start + Duration::from_secs(19))
            .is_err());
        assert_eq!(
            limiter.check(client, start + Duration::from_secs(20)),
            Ok(())
        );
    }

    #[test]
    fn an_ipv6_host_is_limited_by_its_64_and_a_mapped_ipv4_as_ipv4() {
        let limiter = AuthLimiter::new(1);
        let now = Instant::now();
        limiter.charge(ip("2001:db8:1:2::1"), now);
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), now).is_err());
        assert!(limiter.check(ip("2001:db8:1:3::1"), now).is_ok());
        limiter.charge(ip("::ffff:192.0.2.7"), now);
        assert!(limiter.check(ip("192.0.2.7"), now).is_err());
    }

    #[test]
    fn memory_stays_bounded_under_address_churn_and_the_overflow_is_limited_too() {
        let limiter = AuthLimiter::new(2);
        let now = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 500) {
            let client = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            limiter.charge(client, now);
        }
        assert_eq!(limiter.tracked(), MAX_TRACKED);
        // The 500 addresses beyond the table shared one bucket, which is empty; an
        // unseen address while the table is full shares it too.
        assert!(limiter.check(ip("203.0.113.9"), now).is_err());
        // Once the tracked buckets refill, their addresses are forgotten to make room.
        let later = now + Duration::from_secs(61);
        limiter.charge(ip("203.0.113.9"), later);
        assert_eq!(limiter.tracked(), 1);
        assert!(limiter.check(ip("203.0.113.9"), later).is_ok());
        assert!(limiter.check(ip("198.51.100.1"), later).is_ok());
    }
}
