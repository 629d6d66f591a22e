-- Field actions (incr, add, delete, upsert) applied to the value stored when the
-- write commits, inside the batch's UPDATE: never read earlier and written back, so
-- concurrent workers compose exactly. dbimport/actions.py applies the same operations
-- in Python to values it knows (a profile the batch creates); both must agree.
--
-- An operation is {"op": incr|add|delete|upsert_object|upsert_array, "v": value,
-- "path": [...] (upsert), "int": true (incr of an int field), "field": "data.x"}.

CREATE FUNCTION dbimport_apply(stored jsonb, ops jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    op jsonb;
    result jsonb := stored;
    items jsonb;
    total numeric;
    path text[];
    key jsonb;
BEGIN
    FOR op IN SELECT value FROM jsonb_array_elements(ops) LOOP
        CASE op->>'op'
        WHEN 'incr' THEN
            total := (CASE WHEN jsonb_typeof(result) = 'number' THEN result::numeric ELSE 0 END)
                     + (op->'v')::numeric;
            IF op ? 'int' AND (total < -9223372036854775808 OR total > 9223372036854775807) THEN
                RAISE EXCEPTION USING ERRCODE = 'numeric_value_out_of_range',
                    MESSAGE = format('dbimport: %s: the increment takes it out of the 64-bit integer range',
                                     op->>'field');
            END IF;
            result := to_jsonb(total);
        WHEN 'add' THEN
            items := CASE WHEN jsonb_typeof(result) = 'array' THEN result ELSE '[]'::jsonb END;
            result := items || coalesce((
                SELECT jsonb_agg(e ORDER BY i) FROM jsonb_array_elements(op->'v') WITH ORDINALITY AS t(e, i)
                WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(items) AS s(x) WHERE s.x = t.e)
            ), '[]'::jsonb);
        WHEN 'delete' THEN
            items := CASE WHEN jsonb_typeof(result) = 'array' THEN result ELSE '[]'::jsonb END;
            result := coalesce((
                SELECT jsonb_agg(x ORDER BY i) FROM jsonb_array_elements(items) WITH ORDINALITY AS t(x, i)
                WHERE NOT EXISTS (SELECT 1 FROM jsonb_array_elements(op->'v') AS d(y) WHERE d.y = t.x)
            ), '[]'::jsonb);
        WHEN 'upsert_object' THEN
            path := ARRAY(SELECT jsonb_array_elements_text(op->'path'));
            IF jsonb_typeof(result) IS DISTINCT FROM 'object' THEN
                result := '{}'::jsonb;
            END IF;
            FOR depth IN 1 .. cardinality(path) - 1 LOOP
                IF jsonb_typeof(result #> path[1:depth]) IS DISTINCT FROM 'object' THEN
                    result := jsonb_set(result, path[1:depth], '{}'::jsonb);
                END IF;
            END LOOP;
            result := jsonb_set(result, path, op->'v');
        WHEN 'upsert_array' THEN
            path := ARRAY(SELECT jsonb_array_elements_text(op->'path'));
            key := (op->'v') #> path;
            items := CASE WHEN jsonb_typeof(result) = 'array' THEN result ELSE '[]'::jsonb END;
            IF EXISTS (SELECT 1 FROM jsonb_array_elements(items) AS t(e)
                       WHERE jsonb_typeof(t.e) = 'object' AND t.e #> path = key) THEN
                result := (
                    SELECT jsonb_agg(CASE WHEN jsonb_typeof(e) = 'object' AND e #> path = key
                                          THEN e || (op->'v') ELSE e END ORDER BY i)
                    FROM jsonb_array_elements(items) WITH ORDINALITY AS t(e, i)
                );
            ELSE
                result := items || jsonb_build_array(op->'v');
            END IF;
        ELSE
            RAISE EXCEPTION 'dbimport_apply: unknown operation %', op->>'op';
        END CASE;
    END LOOP;
    RETURN result;
END
$$;

-- Each field of `ops` ({field: [operation, ...]}) applied to its value in `fields`.
CREATE FUNCTION dbimport_apply_fields(fields jsonb, ops jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    name text;
    field_ops jsonb;
BEGIN
    FOR name, field_ops IN SELECT key, value FROM jsonb_each(ops) LOOP
        fields := jsonb_set(fields, ARRAY[name], dbimport_apply(fields->name, field_ops));
    END LOOP;
    RETURN fields;
END
$$;

-- The operations on a profile's phones (a text[] column).
CREATE FUNCTION dbimport_apply_phones(phones text[], ops jsonb) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT ARRAY(SELECT jsonb_array_elements_text(dbimport_apply(to_jsonb(phones), ops)))
$$;
