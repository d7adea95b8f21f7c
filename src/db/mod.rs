//! Everything that speaks SQL: pool, migrations, listener (doorbell), cursor reads,
//! filtered queries, administration. Never files.
