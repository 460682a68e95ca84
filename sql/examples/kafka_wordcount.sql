-- Word counts from Kafka to Kafka: lines arrive as records of topic `lines`; every
-- batch writes one record per word whose count changed, keyed by the word, to topic
-- `word_counts` (update mode: a compacted topic keeps the latest count per word).
--
-- Needs a broker on 127.0.0.1:9092 (`scripts/kafka-broker.sh start 9092`: Apache
-- Kafka, installed on first use). From the repository root:
--
--   printf 'the quick brown fox\nthe lazy dog\n' | cargo run -- kafka produce lines
--   cargo run -- -f sql/examples/kafka_wordcount.sql     # runs until Ctrl-C
--   cargo run -- kafka consume word_counts --from-beginning --keys     # elsewhere
--
-- prints `the<TAB>{"word":"the","n":2}` and one such line per other word; lines
-- produced later update the counts.
--
-- 'delivery' 'at_least_once' makes every record visible to any reader at once; leave it
-- out for exactly-once output (one transaction per batch), and consume with
-- --read-committed.

-- The stream: one row per record of topic `lines`. No columns are declared, so the
-- value is not parsed (format raw: a line may hold commas or quotes) and the table
-- has Spark's columns key, value, topic, partition, offset, timestamp, headers. It
-- starts at the topic's first record on the query's first run (the default, 'latest',
-- would skip the lines produced before it started); a restart resumes from the
-- checkpoint.
CREATE UNBOUNDED EXTERNAL TABLE lines
STORED AS KAFKA LOCATION 'lines'
OPTIONS ('bootstrap.servers' '127.0.0.1:9092', 'starting_offsets' 'earliest');

-- One record per changed word: key `the`, value {"word":"the","n":2}.
CREATE SINK word_counts STORED AS KAFKA LOCATION 'word_counts'
OPTIONS ('bootstrap.servers' '127.0.0.1:9092', 'format' 'json', 'key' 'word',
         'output_mode' 'update', 'delivery' 'at_least_once', 'create_topic' 'true',
         'checkpoint' 'checkpoints/word_counts')
AS SELECT word, count(*) AS n
   FROM (SELECT unnest(string_to_array(lower(CAST(value AS VARCHAR)), ' ')) AS word
         FROM lines)
   WHERE word <> ''
   GROUP BY word;
