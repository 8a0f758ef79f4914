"""runtail's analysis side: read runs into pandas, export them to Parquet, replay them."""
