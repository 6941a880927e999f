"""medai.preprocess."""
