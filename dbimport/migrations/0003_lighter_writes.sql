-- The message log's rows are now written once, at the end of the batch's transaction
-- (an insert whose conflict with a concurrent worker's row rolls the batch back),
-- instead of a placeholder inserted first and updated at the end: no page needs
-- room for a second version of a row.
ALTER TABLE message_log SET (fillfactor = 100);

-- The custom fields of a profile: its fields without the system ones (`_fname`...).
-- Only custom fields are matched on (`custom` mode; a declared name starts with a
-- letter), and a message may set only these system fields, so this is exactly the
-- part a look-up can ask about. Indexing it instead of every field spares each
-- profile write the index entries of its system fields (about half of what the
-- index cost a write of the e-mail mix). Look-ups use the same expression
-- (lookup.py), which is what lets them use the index.
CREATE FUNCTION dbimport_custom_fields(fields jsonb) RETURNS jsonb
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    AS $$ SELECT fields - '{_fname,_lname,_city,_country,_region,_postal_code,_vendor,_regcity,_regcountry,_regurl,_browser,_os,_bdate,_sex,_regdate,_regip,_ip,_tz,_status}'::text[] $$;

DROP INDEX profiles_fields_idx;
CREATE INDEX profiles_custom_fields_idx ON profiles
    USING gin (dbimport_custom_fields(fields) jsonb_path_ops) WITH (fastupdate = off);
