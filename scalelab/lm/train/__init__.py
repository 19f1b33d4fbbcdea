"""The one training loop (pretraining, continued pretraining and SFT alike): its config, optimizer and schedule,
preflight checks and metric logs."""
