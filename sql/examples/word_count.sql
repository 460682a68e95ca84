-- The running word count: lines of the text files that land in data/text/, split
-- into words, counted over everything read so far; after every batch the console
-- shows the 20 most frequent words (complete mode). Paths are relative to the
-- working directory; any text files do:
--
--   mkdir -p data/text && cp path/to/millrace/docs/*.md data/text/
--   millrace -f path/to/millrace/sql/examples/word_count.sql
--
-- A word is a run of letters, digits and apostrophes, lower-cased: "Don't," and
-- "don't" are the same word. unnest() turns each line's array of words into one row
-- per word before the aggregation, inside every micro-batch. The state is one row per
-- distinct word, kept for good (there is no event time to forget old words by), and
-- complete mode re-emits the whole result table after each batch, which is what
-- allows ORDER BY and LIMIT after the aggregation.

-- STORED AS TEXT gives one row per line, in a column named value.
CREATE UNBOUNDED EXTERNAL TABLE lines STORED AS TEXT LOCATION 'data/text/'
OPTIONS ('max_files_per_trigger' '1');

CREATE VIEW words AS
SELECT unnest(string_to_array(
         regexp_replace(lower(value), '[^a-z0-9'']+', ' ', 'g'), ' ')) AS word
FROM lines;

CREATE SINK word_count STORED AS CONSOLE
OPTIONS ('output_mode' 'complete', 'trigger' 'available_now', 'num_rows' '20')
AS SELECT word, count(*) AS count
   FROM words
   WHERE word <> ''
   GROUP BY word
   ORDER BY count DESC, word
   LIMIT 20;
