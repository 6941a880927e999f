"""``medai serve``: the hospital loop — DICOM in, selection, jobs under allocations, results out."""
