"""medai.evaluation."""
