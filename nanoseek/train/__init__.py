"""Training stages: one shared loop (loop.py); pretraining, SFT, GRPO, rejection sampling, distillation."""
