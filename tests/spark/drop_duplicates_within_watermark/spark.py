def query(spark, events):
    return events.select("k", "ts", "v").dropDuplicatesWithinWatermark(["k"])
