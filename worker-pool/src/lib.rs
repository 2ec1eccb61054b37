//! Pools of dedicated workers (work in progress).
