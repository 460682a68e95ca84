-- Word counts from Kafka to Kafka: lines arrive as records of topic `lines`; every
-- batch writes one record per word whose count changed, keyed by the word, to topic
-- `word_counts` (update mode: a compacted topic keeps the latest count per word).
--
-- Needs a broker on 127.0.0.1:9092 (`scripts/kafka-broker.sh start nisshi`) and the
-- Kafka source (`STORED AS KAFKA` tables). From the repository root:
--
--   printf 'the quick brown fox\nthe lazy dog\n' | millrace kafka produce lines
--   millrace -f sql/examples/kafka_wordcount.sql
--   millrace kafka consume word_counts --from-beginning --keys     # elsewhere
--
-- nisshi has no transactions, hence 'delivery' 'at_least_once'; on a broker with
-- transactions leave it out for exactly-once output. The sink half can be tried
-- without the Kafka source by reading text files instead:
--   CREATE UNBOUNDED EXTERNAL TABLE lines (line VARCHAR) STORED AS TEXT LOCATION 'in/';

-- The stream: one row per record of topic `lines`, the record's value as `line`,
-- from the topic's first record on the query's first run (the default, 'latest',
-- would skip the lines produced before it started); a restart resumes from the
-- checkpoint.
CREATE UNBOUNDED EXTERNAL TABLE lines (line VARCHAR)
STORED AS KAFKA LOCATION 'lines'
OPTIONS ('bootstrap.servers' '127.0.0.1:9092', 'format' 'csv',
         'starting_offsets' 'earliest');

-- One record per changed word: key `the`, value {"word":"the","n":2}.
CREATE SINK word_counts STORED AS KAFKA LOCATION 'word_counts'
OPTIONS ('bootstrap.servers' '127.0.0.1:9092', 'format' 'json', 'key' 'word',
         'output_mode' 'update', 'delivery' 'at_least_once', 'create_topic' 'true',
         'checkpoint' 'checkpoints/word_counts')
AS SELECT word, count(*) AS n
   FROM (SELECT unnest(string_to_array(lower(line), ' ')) AS word FROM lines)
   WHERE word <> ''
   GROUP BY word;
