def query(spark, events):
    return events.select("k", "v").dropDuplicates()
