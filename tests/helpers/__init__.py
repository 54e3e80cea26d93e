"""What several test modules share (paths, hand-made inputs); no test module imports another."""
