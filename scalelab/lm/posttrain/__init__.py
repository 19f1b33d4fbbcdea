"""From a base model to a chatbot and its scores: the task mixture (tasks/), SFT on top of the training loop,
per-task evaluation and multiple-choice scoring."""
