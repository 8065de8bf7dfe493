"""Training: `charrnn train`'s flags (cli) -> a Learner per engine (learners) driven by the loop (loop),
with the budget and learning rate (schedule), NumPy optimizers (numpy_optim), the distributed world
(distributed), presets, and metrics.jsonl / loss.png (metrics)."""
