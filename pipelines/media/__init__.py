"""Media shared by the batch job and the online endpoint: storage (local and s3://), decoding, URL fetching."""
