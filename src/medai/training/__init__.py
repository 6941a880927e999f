"""medai.training."""
