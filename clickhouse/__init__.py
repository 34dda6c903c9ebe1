"""tagwerk's ClickHouse schema: numbered ``NNNN_name.sql`` migrations, applied in order."""
