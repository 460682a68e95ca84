-- The running word count of word_count.sql over lines from a TCP socket (Spark's
-- classic `nc -lk 9999` example): each line the server sends is a row, split into
-- words and counted over everything received so far; after every batch the console
-- shows the 20 most frequent words (complete mode). Start a server first, then the
-- script, then type lines into the server:
--
--   nc -lk 9999                                           # one terminal: type lines
--   millrace -f path/to/millrace/sql/examples/socket_word_count.sql   # another
--
-- Ctrl-C stops it. A TCP server cannot be asked to send a line again, so this source
-- is not replayable the way files and Kafka are: lines sent while millrace is not
-- connected are lost. Without a 'checkpoint' option the query's checkpoint (which
-- keeps the received lines in a write-ahead log until their batch is committed) is
-- temporary and deleted when it stops, so every run counts from zero; and there is
-- no 'trigger' 'available_now': the stream has no end, the query runs until stopped.
--
-- A word is a run of letters, digits and apostrophes, lower-cased, as in
-- word_count.sql; ORDER BY and LIMIT after the aggregation need complete mode.

-- STORED AS SOCKET gives one row per line, in a column named value.
CREATE UNBOUNDED EXTERNAL TABLE lines STORED AS SOCKET LOCATION 'localhost:9999';

CREATE VIEW words AS
SELECT unnest(string_to_array(
         regexp_replace(lower(value), '[^a-z0-9'']+', ' ', 'g'), ' ')) AS word
FROM lines;

CREATE SINK socket_word_count STORED AS CONSOLE
OPTIONS ('output_mode' 'complete', 'num_rows' '20')
AS SELECT word, count(*) AS count
   FROM words
   WHERE word <> ''
   GROUP BY word
   ORDER BY count DESC, word
   LIMIT 20;
