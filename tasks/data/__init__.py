"""Ingestion, the warehouse, mapping files and the synthetic shop."""
