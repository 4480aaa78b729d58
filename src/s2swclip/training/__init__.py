"""Learning the prompts: the loop (setup/resume, epochs, commits), its state file and the feature cache."""
