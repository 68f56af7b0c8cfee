# The AI layer's own costs on one core: the built-in embedder (short texts per second, one
# embed_batch of 1,000 texts) and PII redaction of 1 KB texts (MB/s), each with the floor of
# reading the same texts in the same run.

bench_ai() {
  local db=bench_ai ms floor
  bench_db $db
  cpsql -d $db -c "CREATE TABLE short_texts AS
      SELECT g AS id, format('user %s failed to log in from office %s after %s attempts', g % 500, g % 40, g % 7) AS t
        FROM generate_series(1, 20000) g;
    CREATE TABLE kb_texts AS
      SELECT g AS id, left(repeat(format('Ticket %s: customer ana%s@example.com called from +44 20 7946 %s about invoice INV-2024-%s; card 4111 1111 1111 1111 was declined on 2024-01-15 at 10:30, version 2.4.1, server 10.0.%s.7. ', g, g % 97, lpad((g % 10000)::text, 4, '0'), g, g % 250), 8), 1024) AS t
        FROM generate_series(1, 5000) g;
    ANALYZE short_texts; ANALYZE kb_texts;" >/dev/null
  local tenant="SELECT custos.set_tenant('00000000-0000-4000-8000-0000000a1b00');"
  floor=$(time_sql $db "SELECT count(*) FROM short_texts WHERE length(t) > 0")
  ms=$(time_sql $db "$tenant SELECT count(*) FROM custos.embed_batch((SELECT array_agg(t ORDER BY id) FROM short_texts))")
  report "local embedder, 20,000 short texts in one embed_batch" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 20000 / (ms / 1000)}')" "texts/s" \
    "the goal" 20000
  report "  (reading the same texts)" "$floor" "ms"
  ms=$(time_sql $db "$tenant SELECT count(*) FROM custos.embed_batch((SELECT array_agg(t ORDER BY id) FROM short_texts WHERE id <= 1000))")
  report "embed_batch of 1,000 texts" "$ms" "ms"
  ms=$(time_sql $db "$tenant SELECT count(custos.embed(t)) FROM short_texts WHERE id <= 5000")
  report "custos.embed, one call per text (5,000 calls)" "$(awk -v ms="$ms" 'BEGIN {printf "%.0f", 5000 / (ms / 1000)}')" "texts/s"
  floor=$(time_sql $db "SELECT sum(length(t)) FROM kb_texts")
  ms=$(time_sql $db "$tenant SELECT sum(length(custos.redact(t))) FROM kb_texts")
  report "custos.redact, 5,000 texts of 1 KB (tenant rules looked up per call)" \
    "$(awk -v ms="$ms" 'BEGIN {printf "%.1f", 5000 * 1024 / 1e6 / (ms / 1000)}')" "MB/s" "the goal" 10
  report "  (reading the same texts)" "$floor" "ms"
  cpsql -d $db -At -c "$tenant SELECT '  one redacted text: ' || left(custos.redact(t), 190) || '...' FROM kb_texts WHERE id = 42" | tail -1
}
