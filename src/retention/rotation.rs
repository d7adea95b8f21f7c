//! The queue of organizations a run serves in turn, and how much of it one batch gets.
//!
//! Every organization with work has a place in the rotation (a key; smaller goes
//! first). A batch takes the organizations at the front; afterwards, those it did not
//! reach go back to the places they had, one it served that has more goes to the back,
//! and one with nothing left leaves. Keys, rather than pushing to the front, keep that
//! order exact when several batches are in flight and finish in any order.
//!
//! Batches in flight at once each take their own part of the queue (an organization is
//! never in two batches at once, so its rows still go oldest first), and each part must
//! be *known* to hold a full batch, or the batch could end up partly full while rows
//! wait in another part and the run would delete less than its cap: see
//! [`Rotation::prefix_len`].

use std::collections::{BTreeMap, HashMap, VecDeque};

use uuid::Uuid;

use crate::db::retention::{Keyset, MAX_TARGETS_PER_BATCH, MIN_TURN_ROWS};

/// One organization's place in the rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Turn {
    /// Index into the run's organization reports.
    pub index: usize,
    /// The last row deleted from it in this run, to continue after.
    pub after: Option<Keyset>,
}

/// Organizations handed to one batch, with their places, in rotation order.
pub(super) type Prefix = Vec<(u64, Turn)>;

/// What a batch did to one organization of its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Served {
    /// The batch filled up before reaching it.
    NotReached,
    /// It lost rows and has more: continue after `last` on its next turn.
    More { last: Keyset },
    /// Nothing (more) that may be deleted now.
    Done,
}

/// The organizations waiting for a turn.
#[derive(Debug, Default)]
pub(super) struct Rotation {
    waiting: BTreeMap<u64, Turn>,
    next_key: u64,
    /// Rows an organization (by report index) is known to have that may be deleted
    /// now, at least: counted up to a cap, less what the run deleted since. Absent:
    /// unknown.
    known: HashMap<usize, u64>,
}

impl Rotation {
    /// A rotation in the order given.
    pub fn new(turns: VecDeque<Turn>) -> Rotation {
        let mut rotation = Rotation::default();
        for turn in turns {
            rotation.push_back(turn);
        }
        rotation
    }

    fn push_back(&mut self, turn: Turn) {
        self.waiting.insert(self.next_key, turn);
        self.next_key += 1;
    }

    /// Organizations waiting (not counting those in a batch in flight).
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Records that organization `index` has at least `rows` rows that may be deleted.
    pub fn learn(&mut self, index: usize, rows: u64) {
        self.known.insert(index, rows);
    }

    /// Records that `rows` of organization `index`'s rows were deleted.
    pub fn forget(&mut self, index: usize, rows: u64) {
        if let Some(known) = self.known.get_mut(&index) {
            *known = known.saturating_sub(rows);
        }
    }

    fn known(&self, index: usize) -> u64 {
        self.known.get(&index).copied().unwrap_or(0)
    }

    /// The organization whose turn is next.
    pub fn front(&self) -> Option<&Turn> {
        self.waiting.first_key_value().map(|(_, turn)| turn)
    }

    /// Takes the first `n` organizations out, for a batch.
    pub fn take_front(&mut self, n: usize) -> Prefix {
        std::iter::from_fn(|| self.waiting.pop_first())
            .take(n)
            .collect()
    }

    /// Puts a batch's prefix back as `served` says (one entry per organization, in
    /// prefix order). Returns the report indexes of the organizations finished.
    pub fn settle(&mut self, prefix: Prefix, served: &[Served]) -> Vec<usize> {
        let mut finished = Vec::new();
        for ((key, mut turn), served) in prefix.into_iter().zip(served) {
            match served {
                Served::NotReached => {
                    self.waiting.insert(key, turn);
                }
                Served::More { last } => {
                    turn.after = Some(*last);
                    self.push_back(turn);
                }
                Served::Done => finished.push(turn.index),
            }
        }
        finished
    }

    /// A prefix whose batch failed goes back as it was.
    pub fn restore(&mut self, prefix: Prefix) {
        self.waiting.extend(prefix);
    }

    /// How many organizations at the front the next batch gets (turns of `turn` rows
    /// in batches of `batch_size`), or `None` when it should not start yet.
    ///
    /// - `alone` (no other batch in flight, no other session free): all of them, up
    ///   to [`MAX_TARGETS_PER_BATCH`], as when batches run one at a time; the batch
    ///   fills whenever they have the rows.
    /// - Otherwise the shortest front that is known to hold a full batch, and at least
    ///   as many organizations as first turns fill a batch (so that turns stay the same
    ///   size as one batch at a time would give them). Without such a front: all of
    ///   them when nothing is in flight, or wait for the batches in flight.
    pub fn prefix_len(
        &self,
        batch_size: u64,
        turn: u64,
        alone: bool,
        in_flight: bool,
    ) -> Option<usize> {
        let all = self.len().min(MAX_TARGETS_PER_BATCH);
        if alone {
            return Some(all);
        }
        let first_turns = first_turns(batch_size, turn);
        let mut known = 0u64;
        for (n, turn) in self.waiting.values().take(all).enumerate() {
            known = known.saturating_add(self.known(turn.index));
            if known >= batch_size && n + 1 >= first_turns {
                return Some(n + 1);
            }
        }
        if in_flight {
            None
        } else {
            Some(all)
        }
    }
}

/// The rows of one organization's turn: the batch shared evenly between the
/// organizations waiting (`waiting`, including those in batches in flight), at least
/// [`MIN_TURN_ROWS`].
pub(super) fn turn_rows(batch_size: u64, waiting: usize) -> u64 {
    let waiting = u64::try_from(waiting).unwrap_or(u64::MAX).max(1);
    (batch_size / waiting).max(MIN_TURN_ROWS)
}

/// How many organizations' first turns (of `turn` rows) fill a batch of `batch_size`.
pub(super) fn first_turns(batch_size: u64, turn: u64) -> usize {
    usize::try_from(batch_size.div_ceil(turn.max(1))).unwrap_or(usize::MAX)
}

/// Puts `items` (sorted by id) into rotation order: the first one with an id at or
/// after `resume`, then the following ones, wrapping around.
pub(super) fn rotation_order<T>(
    items: Vec<T>,
    id: impl Fn(&T) -> Uuid,
    resume: Option<Uuid>,
) -> VecDeque<T> {
    let start = resume.map_or(0, |resume| {
        items
            .iter()
            .position(|item| id(item) >= resume)
            .unwrap_or(0)
    });
    let mut queue: VecDeque<T> = items.into();
    queue.rotate_left(start);
    queue
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn turns(n: usize) -> VecDeque<Turn> {
        (0..n).map(|index| Turn { index, after: None }).collect()
    }

    /// A rotation of organizations known to have these many rows.
    fn known(rows: &[u64]) -> Rotation {
        let mut rotation = Rotation::new(turns(rows.len()));
        for (index, &rows) in rows.iter().enumerate() {
            rotation.learn(index, rows);
        }
        rotation
    }

    fn order(rotation: &Rotation) -> Vec<usize> {
        rotation.waiting.values().map(|turn| turn.index).collect()
    }

    fn keyset(n: i64) -> Keyset {
        (Utc.timestamp_opt(n, 0).unwrap(), n)
    }

    #[test]
    fn unreached_organizations_keep_their_places_whatever_order_batches_finish_in() {
        let mut rotation = Rotation::new(turns(6));
        let first = rotation.take_front(3);
        let second = rotation.take_front(2);
        assert_eq!(order(&rotation), [5]);
        // The second batch finishes first: it served 3, did not reach 4.
        let finished = rotation.settle(
            second,
            &[Served::More { last: keyset(3) }, Served::NotReached],
        );
        assert!(finished.is_empty());
        assert_eq!(order(&rotation), [4, 5, 3]);
        // Then the first: served 0 (done) and 1 (more), did not reach 2.
        let finished = rotation.settle(
            first,
            &[
                Served::Done,
                Served::More { last: keyset(1) },
                Served::NotReached,
            ],
        );
        assert_eq!(finished, [0]);
        assert_eq!(order(&rotation), [2, 4, 5, 3, 1]);
        assert_eq!(rotation.front().map(|t| t.index), Some(2));
        let served = rotation.waiting.values().find(|t| t.index == 1).unwrap();
        assert_eq!(served.after, Some(keyset(1)));
    }

    #[test]
    fn a_failed_batch_puts_its_prefix_back_in_place() {
        let mut rotation = Rotation::new(turns(4));
        let prefix = rotation.take_front(2);
        rotation.restore(prefix);
        assert_eq!(order(&rotation), [0, 1, 2, 3]);
    }

    #[test]
    fn a_batch_alone_gets_the_whole_queue() {
        let rotation = Rotation::new(turns(1500));
        assert_eq!(
            rotation.prefix_len(5000, 250, true, false),
            Some(MAX_TARGETS_PER_BATCH)
        );
        let rotation = Rotation::new(turns(3));
        assert_eq!(rotation.prefix_len(5000, 250, true, false), Some(3));
    }

    #[test]
    fn concurrent_batches_get_fronts_known_to_fill_them_with_first_turns() {
        // Turns of 250 rows in batches of 5,000: 20 organizations with 300 rows each.
        let rotation = known(&[300; 50]);
        assert_eq!(rotation.prefix_len(5000, 250, false, false), Some(20));
        assert_eq!(rotation.prefix_len(5000, 250, false, true), Some(20));
        // Turns of 5,000: one huge organization fills a batch on its own.
        let rotation = known(&[1_000_000, 10, 10]);
        assert_eq!(rotation.prefix_len(5000, 5000, false, true), Some(1));
        // Small organizations: as many as it takes to hold 5,000 rows.
        let rotation = known(&[2000, 10, 2990, 1, 5000]);
        assert_eq!(rotation.prefix_len(5000, 5000, false, true), Some(3));
    }

    #[test]
    fn what_a_run_deletes_is_no_longer_counted_on() {
        let mut rotation = known(&[260; 20]);
        assert_eq!(rotation.prefix_len(5000, 250, false, true), Some(20));
        rotation.forget(0, 250);
        // 4,950 known: not a full batch, wait.
        assert_eq!(rotation.prefix_len(5000, 250, false, true), None);
        // An organization never counted is known to have nothing.
        rotation.forget(99, 10);
        assert_eq!(rotation.known(99), 0);
    }

    #[test]
    fn without_a_front_known_to_fill_a_batch_it_waits_or_takes_everything() {
        // Rows unknown (0), or too few known: never a partly full batch while another
        // is in flight; with nothing in flight, one batch takes the whole queue.
        for rows in [vec![0; 50], vec![100; 49]] {
            let rotation = known(&rows);
            assert_eq!(rotation.prefix_len(5000, 250, false, true), None);
            assert_eq!(
                rotation.prefix_len(5000, 250, false, false),
                Some(rows.len())
            );
        }
        assert_eq!(
            Rotation::default().prefix_len(5000, 250, false, false),
            Some(0)
        );
    }

    #[test]
    fn turns_share_the_batch_but_never_go_below_the_minimum() {
        assert_eq!(turn_rows(5000, 1), 5000);
        assert_eq!(turn_rows(5000, 4), 1250);
        assert_eq!(turn_rows(5000, 1000), MIN_TURN_ROWS);
        assert_eq!(turn_rows(5000, 0), 5000);
    }

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn rotation_starts_at_the_resume_point_and_wraps() {
        let ids = vec![id(1), id(3), id(5), id(7)];
        let order = |resume| Vec::from(rotation_order(ids.clone(), |id| *id, resume));
        assert_eq!(order(None), [id(1), id(3), id(5), id(7)]);
        assert_eq!(order(Some(id(5))), [id(5), id(7), id(1), id(3)]);
        // A vanished organization: resume at the next larger id.
        assert_eq!(order(Some(id(4))), [id(5), id(7), id(1), id(3)]);
        // Past the last id: wrap to the first.
        assert_eq!(order(Some(id(9))), [id(1), id(3), id(5), id(7)]);
        assert!(rotation_order(Vec::<Uuid>::new(), |id| *id, Some(id(1))).is_empty());
    }
}
