"""medai.data."""
