"""The staleness machinery (METHOD.md Sec. 2-7): cloud snapshots and stale requests, the device's
cues, the reliability estimator, the bounded calibrator, the methods' heads, the protocol that
evaluates them, their diagnostics and the on-device serving path."""
