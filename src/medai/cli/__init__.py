"""medai.cli."""
