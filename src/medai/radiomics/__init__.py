"""medai.radiomics."""
