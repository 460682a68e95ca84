def query(spark, events):
    return events.select("k", "v", "x").dropDuplicates(["k", "v"])
