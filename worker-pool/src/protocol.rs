//! The task protocol between a [`TaskPool`](crate::TaskPool) and its workers, for workers
//! written in other languages.
