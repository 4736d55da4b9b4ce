"""The student room: `worker` (the train step and everything a rank answers), `plans` (each teacher's loss
and W), `kd` (the loss modules on the student's device), `optim`, `parallel` (DDP/FSDP2), `metrics`."""
