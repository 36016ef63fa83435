using Npgsql;

namespace HighlanderPG.Fencing;

/// <summary>
/// Moving singletons on purpose, from anywhere with database access: the durable hold-offs and the functions that
/// request them (<c>step_down</c>, <c>drain</c>, <c>undrain</c>), in the fencing schema. SECURITY DEFINER with EXECUTE
/// revoked from PUBLIC: the right to move singletons is a database privilege (<c>GRANT EXECUTE</c>). Each request is a
/// row in <c>hold_offs</c> and a NOTIFY on <see cref="Channel"/> naming the node; the node reads its hold-offs, steps
/// down from what they cover and takes none of it until they end. See docs/lease-protocol.md, "Step down and drain".
/// </summary>
internal static class ControlSql
{
    /// <summary>The version of the control objects, kept in the comment of the <c>hold_offs</c> table.</summary>
    public const string Version = "highlander control v1";

    /// <summary>SQLSTATE: nobody leads the singleton.</summary>
    public const string NobodyLeadsSqlState = "HL020";

    /// <summary>SQLSTATE: the node named does not lead the singleton (the message names who does).</summary>
    public const string NotLeaderSqlState = "HL021";

    /// <summary>SQLSTATE: no live node has that id.</summary>
    public const string UnknownNodeSqlState = "HL022";

    /// <summary>SQLSTATE: a bad argument (negative hold-off, blank node id).</summary>
    public const string BadArgumentSqlState = "HL023";

    /// <summary>The channel the nodes' lock sessions LISTEN on for control requests (one per schema); its payload is the node id.</summary>
    public static string Channel(string schema) => Messaging.MessagingSql.Valid(schema) + "_control";

    /// <summary>The signatures of the functions, as GRANT wants them.</summary>
    public static string StepDownSignature(string schema) => $"{Messaging.MessagingSql.Valid(schema)}.step_down(bigint, text, interval, text)";

    /// <inheritdoc cref="StepDownSignature"/>
    public static string DrainSignature(string schema) => $"{Messaging.MessagingSql.Valid(schema)}.drain(text, interval, text)";

    /// <inheritdoc cref="StepDownSignature"/>
    public static string UndrainSignature(string schema) => $"{Messaging.MessagingSql.Valid(schema)}.undrain(text)";

    /// <summary>The DDL (idempotent). The schema is validated (lowercase identifier) before it is put into SQL.</summary>
    public static string Ddl(string schema)
    {
        var s = Messaging.MessagingSql.Valid(schema);
        // The lock sessions of live nodes, and which advisory keys they hold (HolderQuery's mapping of a bigint key).
        const string Holders = """
            SELECT substr(a.application_name, length('highlander/') + 1) AS node_id, ((l.classid::bigint << 32) | l.objid::bigint) AS key
              FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND l.mode = 'ExclusiveLock'
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND a.datname = current_database() AND a.application_name LIKE 'highlander/%'
            """;
        return $$"""
            CREATE SCHEMA IF NOT EXISTS {{s}};
            -- One row per request: the node may not lead the key (NULL: any singleton, a drain) until "until".
            CREATE TABLE IF NOT EXISTS {{s}}.hold_offs (
                id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                node_id      text        NOT NULL,
                key          bigint,
                until        timestamptz NOT NULL,
                requested_by text        NOT NULL DEFAULT session_user,
                requested_at timestamptz NOT NULL DEFAULT clock_timestamp(),
                reason       text
            );
            CREATE INDEX IF NOT EXISTS hold_offs_node ON {{s}}.hold_offs (node_id, until);
            COMMENT ON TABLE {{s}}.hold_offs IS '{{Version}}';
            -- Nodes read their own hold-offs (whatever their role); only the functions below write them.
            GRANT SELECT ON {{s}}.hold_offs TO PUBLIC;

            -- request_hold_off (for the functions below only): records a hold-off and tells the node (NOTIFY, at commit).
            CREATE OR REPLACE FUNCTION {{s}}.request_hold_off(p_node text, p_key bigint, p_hold_off interval, p_reason text)
            RETURNS timestamptz LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                v_until timestamptz;
            BEGIN
                IF p_hold_off IS NULL OR p_hold_off < interval '0' THEN
                    RAISE EXCEPTION 'the hold-off must be zero or positive, got %', coalesce(p_hold_off::text, 'NULL') USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                v_until := clock_timestamp() + p_hold_off;
                DELETE FROM {{s}}.hold_offs h WHERE h.until < clock_timestamp();
                INSERT INTO {{s}}.hold_offs (node_id, key, until, reason) VALUES (p_node, p_key, v_until, p_reason);
                PERFORM pg_notify('{{Channel(schema)}}', p_node);
                RETURN v_until;
            END
            $fn$;

            -- step_down: the node leading the key (or the node named, which must lead it) stops its child, releases the
            -- lock, tells the others, and does not take the key again for p_hold_off. Returns the node and the end of the
            -- hold-off. Raises HL020 (nobody leads it), HL021 (the node named does not lead it), HL023 (bad argument).
            CREATE OR REPLACE FUNCTION {{s}}.step_down(p_key bigint, p_node text DEFAULT NULL, p_hold_off interval DEFAULT interval '1 minute', p_reason text DEFAULT NULL)
            RETURNS TABLE (node_id text, until timestamptz) LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                v_leader text;
                v_until timestamptz;
            BEGIN
                IF p_key IS NULL THEN
                    RAISE EXCEPTION 'step_down needs the singleton''s key' USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                IF p_node IS NOT NULL AND btrim(p_node) = '' THEN
                    RAISE EXCEPTION 'the node id must not be blank (NULL: whoever leads the singleton)' USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                SELECT h.node_id INTO v_leader FROM ({{Holders}}) h WHERE h.key = p_key LIMIT 1;
                IF v_leader IS NULL THEN
                    RAISE EXCEPTION 'nobody leads singleton key % right now', p_key
                        USING ERRCODE = '{{NobodyLeadsSqlState}}',
                              HINT = 'Check the name and namespace (the key is derived from both), and that a node runs it.';
                END IF;
                IF p_node IS NOT NULL AND p_node <> v_leader THEN
                    RAISE EXCEPTION 'node "%" does not lead singleton key %: node "%" does', p_node, p_key, v_leader
                        USING ERRCODE = '{{NotLeaderSqlState}}',
                              HINT = 'Leave the node out to step down whoever leads it.';
                END IF;
                v_until := {{s}}.request_hold_off(v_leader, p_key, p_hold_off, p_reason);
                RETURN QUERY SELECT v_leader, v_until;
            END
            $fn$;

            -- drain: the node steps down from every singleton it leads and takes none until the hold-off ends (or undrain).
            -- Returns the end of the hold-off and the keys the node led. Raises HL022 (no live node has that id), HL023.
            CREATE OR REPLACE FUNCTION {{s}}.drain(p_node text, p_hold_off interval DEFAULT interval '10 minutes', p_reason text DEFAULT NULL)
            RETURNS TABLE (until timestamptz, keys bigint[]) LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                v_until timestamptz;
            BEGIN
                IF p_node IS NULL OR btrim(p_node) = '' THEN
                    RAISE EXCEPTION 'drain needs a node id' USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                IF NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.datname = current_database() AND a.application_name = 'highlander/' || p_node) THEN
                    RAISE EXCEPTION 'no live node has id "%"', p_node
                        USING ERRCODE = '{{UnknownNodeSqlState}}',
                              HINT = 'Node ids are those of highlander status (the lock sessions'' application_name highlander/{NodeId}).';
                END IF;
                v_until := {{s}}.request_hold_off(p_node, NULL, p_hold_off, p_reason);
                RETURN QUERY SELECT v_until, coalesce((SELECT array_agg(h.key ORDER BY h.key) FROM ({{Holders}}) h WHERE h.node_id = p_node), '{}');
            END
            $fn$;

            -- undrain: ends every hold-off of the node (drains and step-downs) at once. Returns how many it ended.
            CREATE OR REPLACE FUNCTION {{s}}.undrain(p_node text)
            RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                v_count integer;
            BEGIN
                IF p_node IS NULL OR btrim(p_node) = '' THEN
                    RAISE EXCEPTION 'undrain needs a node id' USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                DELETE FROM {{s}}.hold_offs h WHERE h.node_id = p_node AND h.until > clock_timestamp();
                GET DIAGNOSTICS v_count = ROW_COUNT;
                DELETE FROM {{s}}.hold_offs h WHERE h.until < clock_timestamp();
                PERFORM pg_notify('{{Channel(schema)}}', p_node);
                RETURN v_count;
            END
            $fn$;

            REVOKE EXECUTE ON FUNCTION {{s}}.request_hold_off(text, bigint, interval, text) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{StepDownSignature(schema)}} FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{DrainSignature(schema)}} FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{UndrainSignature(schema)}} FROM PUBLIC;
            """;
    }

    /// <summary>Whether the control objects exist in their current version (one parameter: the schema).</summary>
    public const string Exists = $"""
        SELECT coalesce(obj_description(to_regclass(quote_ident($1) || '.hold_offs'), 'pg_class') = '{Version}', false)
        """;

    /// <summary>
    /// A node's hold-offs (parameters: the node id, the highest request id it saw before): those still running, and
    /// those requested since (even if already over: a step-down with a zero hold-off), with what remains of each on the
    /// server's clock. Rows: the highest request id so far, the key (NULL: every singleton), the remaining time in
    /// milliseconds (NULL: no hold-off at all, the one row then).
    /// </summary>
    public static string Read(string schema) => $"""
        SELECT s.top, h.key, h.remaining
          FROM (SELECT coalesce(max(id), 0) AS top FROM {Messaging.MessagingSql.Valid(schema)}.hold_offs) s
          LEFT JOIN LATERAL (
                SELECT h.key, max(CASE WHEN isfinite(h.until) THEN extract(epoch from h.until - clock_timestamp())::float8 * 1000
                                       WHEN h.until > clock_timestamp() THEN 'Infinity'::float8
                                       ELSE '-Infinity'::float8 END) AS remaining
                  FROM {Messaging.MessagingSql.Valid(schema)}.hold_offs h
                 WHERE h.node_id = $1 AND (h.until > clock_timestamp() OR h.id > $2)
                 GROUP BY h.key) h ON true
        """;

    /// <summary>Creates or upgrades the control objects unless current, under the schema's DDL lock (<see cref="FencingSql.LockDdlAsync"/>).</summary>
    public static Task EnsureCreatedAsync(NpgsqlConnection connection, string schema, CancellationToken cancellationToken) =>
        SchemaObjects.EnsureCurrentAsync(connection, schema, Exists, Ddl, cancellationToken);

    /// <summary>Whether the current control objects exist (without creating them).</summary>
    public static Task<bool> ExistAsync(NpgsqlConnection connection, string schema, CancellationToken cancellationToken) =>
        SchemaObjects.IsCurrentAsync(connection, null, schema, Exists, cancellationToken);

    /// <summary>
    /// Reads a node's hold-offs: per key the remaining time, and under <see langword="null"/> key a drain's; those
    /// running, and those requested after request <paramref name="seenId"/> (<see cref="long.MaxValue"/>: running only).
    /// </summary>
    public static async Task<HoldOffSet> ReadAsync(NpgsqlConnection connection, string schema, string nodeId, long seenId, CancellationToken cancellationToken)
    {
        var keys = new Dictionary<long, TimeSpan>();
        TimeSpan? all = null;
        long top = 0;
        await using var cmd = new NpgsqlCommand(Read(schema), connection);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = nodeId });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = seenId });
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            top = reader.GetInt64(0);
            if (reader.IsDBNull(2))
            {
                continue;
            }

            // At most the ledger's longest hold-off: an interval of centuries (or 'infinity', PostgreSQL 17) overflows a TimeSpan.
            var milliseconds = reader.GetDouble(2);
            var remaining = milliseconds <= 0 ? TimeSpan.Zero
                : !double.IsFinite(milliseconds) || milliseconds >= Leasing.KeyLedger.MaxHoldOff.TotalMilliseconds ? Leasing.KeyLedger.MaxHoldOff
                : TimeSpan.FromMilliseconds(milliseconds);
            if (reader.IsDBNull(1))
            {
                all = remaining;
            }
            else
            {
                keys[reader.GetInt64(1)] = remaining;
            }
        }

        return new HoldOffSet(all, keys, top);
    }

}

/// <summary>
/// A node's hold-offs as read: a drain's remaining time (every key), per key a step-down's (zero: step down, but no
/// hold-off), and the highest request id at the time (the next read's <c>seenId</c>).
/// </summary>
internal sealed record HoldOffSet(TimeSpan? All, IReadOnlyDictionary<long, TimeSpan> Keys, long TopId = long.MaxValue)
{
    public static readonly HoldOffSet None = new(null, new Dictionary<long, TimeSpan>());
}
