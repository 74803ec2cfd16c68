"""Getting klines into the shard layout: Binance REST, the data.binance.vision archive, local files."""
