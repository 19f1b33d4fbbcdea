"""The chat tasks: one file per task, the mixture that weighs them, and the sandbox that runs generated code."""
