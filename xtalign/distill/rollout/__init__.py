"""The on-policy room: `sampling` (the student's KV-cache sampling loop, seeded per row), `samples` (prompts,
completions, and a sample as a batch row on every side), `source` (the rollout BatchSource), `objective`
(the reverse-KL policy gradient, exact at chunk level), `evaluate` (scoring a student's own samples)."""
