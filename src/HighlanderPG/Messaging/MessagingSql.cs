using HighlanderPG.Fencing;
using Npgsql;

namespace HighlanderPG.Messaging;

/// <summary>
/// The messaging tables and functions, in the fencing schema. Created (or upgraded) on first use by a node with
/// messaging on; the same DDL is what a DBA runs ahead. See docs/messaging.md.
/// </summary>
internal static class MessagingSql
{
    /// <summary>The version of the messaging objects, kept in the comment of the <c>messages</c> table.</summary>
    public const string Version = "highlander messaging v1";

    /// <summary>SQLSTATE: no node has registered the singleton for messages.</summary>
    public const string UnknownSingletonSqlState = "HL010";

    /// <summary>SQLSTATE: the singleton's queue is full.</summary>
    public const string QueueFullSqlState = "HL011";

    /// <summary>SQLSTATE: the payload exceeds the singleton's limit.</summary>
    public const string PayloadTooLargeSqlState = "HL012";

    /// <summary>SQLSTATE: a bad argument (null payload, non-positive time-to-live).</summary>
    public const string BadArgumentSqlState = "HL013";

    /// <summary>SQLSTATE: the message is not pending for this leader (already acknowledged, dead-lettered, taken by another).</summary>
    public const string NotPendingSqlState = "HL014";

    /// <summary>The channel the nodes LISTEN on for new messages (one per schema); its payload is <c>[namespace, name]</c> as JSON.</summary>
    public static string Channel(string schema) => Valid(schema) + "_messages";

    /// <summary>The DDL (idempotent). The schema is validated (lowercase identifier) before it is put into SQL.</summary>
    public static string Ddl(string schema)
    {
        var s = Valid(schema);
        return $$"""
            CREATE SCHEMA IF NOT EXISTS {{s}};
            -- The registry: one row per singleton a node registered for messages, with its limits.
            CREATE TABLE IF NOT EXISTS {{s}}.inboxes (
                namespace         text        NOT NULL,
                name              text        NOT NULL,
                max_pending       integer     NOT NULL CHECK (max_pending > 0),
                max_deliveries    integer     NOT NULL CHECK (max_deliveries > 0),
                max_payload_bytes integer     NOT NULL CHECK (max_payload_bytes > 0),
                default_ttl       interval,
                registered_by     text        NOT NULL,
                registered_at     timestamptz NOT NULL,
                PRIMARY KEY (namespace, name)
            );
            CREATE TABLE IF NOT EXISTS {{s}}.messages (
                id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                namespace      text        NOT NULL,
                name           text        NOT NULL,
                state          text        NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'done', 'dead', 'expired')),
                payload        jsonb       NOT NULL,
                type           text,
                sent_at        timestamptz NOT NULL,
                expires_at     timestamptz,
                reply_channel  text,
                reply          jsonb,
                deliveries     integer     NOT NULL DEFAULT 0,
                taken_epoch    bigint,
                taken_at       timestamptz,
                finished_at    timestamptz,
                finished_epoch bigint,
                last_error     text
            );
            CREATE INDEX IF NOT EXISTS messages_pending ON {{s}}.messages (namespace, name, id) WHERE state = 'pending';
            CREATE INDEX IF NOT EXISTS messages_finished ON {{s}}.messages (namespace, name, finished_at) WHERE state IN ('done', 'expired');
            COMMENT ON TABLE {{s}}.messages IS '{{Version}}';

            -- send: from any process, any language. Returns the message id. Raises HL010 (unknown singleton), HL011
            -- (queue full), HL012 (payload too large), HL013 (bad argument). NOTIFYs the nodes at commit.
            CREATE OR REPLACE FUNCTION {{s}}.send(p_namespace text, p_name text, p_payload jsonb, p_ttl interval DEFAULT NULL,
                                                  p_type text DEFAULT NULL, p_reply_channel text DEFAULT NULL)
            RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                r record;
                v_size integer;
                v_pending integer;
                v_id bigint;
                v_now timestamptz := clock_timestamp();
            BEGIN
                SELECT * INTO r FROM {{s}}.inboxes i WHERE i.namespace = p_namespace AND i.name = p_name;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'unknown singleton "%" in namespace "%": no node has registered it for messages', p_name, p_namespace
                        USING ERRCODE = '{{UnknownSingletonSqlState}}',
                              HINT = 'Check the name and namespace; a node registers its singletons when it starts with AddHighlanderMessaging.';
                END IF;
                IF p_payload IS NULL THEN
                    RAISE EXCEPTION 'the payload of a message to "%" must not be NULL (send the JSON value null as ''null''::jsonb)', p_name
                        USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                IF p_ttl IS NOT NULL AND p_ttl <= interval '0' THEN
                    RAISE EXCEPTION 'the time-to-live of a message to "%" must be positive, got %', p_name, p_ttl
                        USING ERRCODE = '{{BadArgumentSqlState}}';
                END IF;
                v_size := octet_length(p_payload::text);
                IF v_size > r.max_payload_bytes THEN
                    RAISE EXCEPTION 'payload too large for singleton "%": % bytes of JSON, the limit is % bytes', p_name, v_size, r.max_payload_bytes
                        USING ERRCODE = '{{PayloadTooLargeSqlState}}',
                              HINT = 'Store large data in a table of your own and send its key.';
                END IF;
                SELECT count(*) INTO v_pending FROM (SELECT 1 FROM {{s}}.messages m
                    WHERE m.namespace = p_namespace AND m.name = p_name AND m.state = 'pending' LIMIT r.max_pending) q;
                IF v_pending >= r.max_pending THEN
                    RAISE EXCEPTION 'the queue of singleton "%" is full: % messages wait to be acknowledged', p_name, v_pending
                        USING ERRCODE = '{{QueueFullSqlState}}',
                              HINT = 'Retry later, or raise MaxPending of the nodes'' messaging options.';
                END IF;
                INSERT INTO {{s}}.messages (namespace, name, payload, type, sent_at, expires_at, reply_channel)
                VALUES (p_namespace, p_name, p_payload, p_type, v_now, v_now + coalesce(p_ttl, r.default_ttl), p_reply_channel)
                RETURNING id INTO v_id;
                PERFORM pg_notify('{{Channel(schema)}}', json_build_array(p_namespace, p_name)::text);
                RETURN v_id;
            END
            $fn$;

            -- take_message: the leader takes the oldest pending message it has not taken yet in this epoch; expired ones
            -- are marked expired, ones delivered max_deliveries times without acknowledgement are dead-lettered.
            CREATE OR REPLACE FUNCTION {{s}}.take_message(p_namespace text, p_name text, p_epoch bigint)
            RETURNS TABLE (id bigint, payload jsonb, type text, sent_at timestamptz, expires_at timestamptz, deliveries integer, is_call boolean)
            LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                m record;
                v_max integer;
                v_now timestamptz := clock_timestamp();
            BEGIN
                IF NOT EXISTS (SELECT 1 FROM {{s}}.leases l WHERE l.namespace = p_namespace AND l.name = p_name AND l.epoch = p_epoch) THEN
                    RAISE EXCEPTION 'stale fencing epoch % for singleton "%" (namespace "%"): it may not take messages', p_epoch, p_name, p_namespace
                        USING ERRCODE = '{{FencingSql.StaleEpochSqlState}}';
                END IF;
                SELECT i.max_deliveries INTO v_max FROM {{s}}.inboxes i WHERE i.namespace = p_namespace AND i.name = p_name;
                LOOP
                    SELECT q.* INTO m FROM {{s}}.messages q
                     WHERE q.namespace = p_namespace AND q.name = p_name AND q.state = 'pending'
                       AND q.taken_epoch IS DISTINCT FROM p_epoch
                     ORDER BY q.id LIMIT 1 FOR UPDATE SKIP LOCKED;
                    IF NOT FOUND THEN
                        RETURN;
                    END IF;
                    IF m.expires_at IS NOT NULL AND m.expires_at <= v_now THEN
                        UPDATE {{s}}.messages SET state = 'expired', finished_at = v_now WHERE messages.id = m.id;
                        IF m.reply_channel IS NOT NULL THEN
                            PERFORM pg_notify(m.reply_channel, m.id || ' expired');
                        END IF;
                        CONTINUE;
                    END IF;
                    IF m.deliveries >= coalesce(v_max, 2147483647) THEN
                        UPDATE {{s}}.messages SET state = 'dead', finished_at = v_now,
                               last_error = coalesce(last_error, 'delivered ' || m.deliveries || ' times without acknowledgement')
                         WHERE messages.id = m.id;
                        IF m.reply_channel IS NOT NULL THEN
                            PERFORM pg_notify(m.reply_channel, m.id || ' dead');
                        END IF;
                        CONTINUE;
                    END IF;
                    UPDATE {{s}}.messages SET deliveries = m.deliveries + 1, taken_epoch = p_epoch, taken_at = v_now WHERE messages.id = m.id;
                    RETURN QUERY SELECT m.id, m.payload, m.type, m.sent_at, m.expires_at, m.deliveries + 1, m.reply_channel IS NOT NULL;
                    RETURN;
                END LOOP;
            END
            $fn$;

            -- ack_message: in the child's own transaction, with its effects. Guarded by the fencing epoch (assert_epoch:
            -- HL001 for a stale leader); a call's reply is stored and NOTIFYed to the caller at commit.
            CREATE OR REPLACE FUNCTION {{s}}.ack_message(p_id bigint, p_epoch bigint, p_reply jsonb DEFAULT NULL)
            RETURNS void LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                m record;
                v_text text;
            BEGIN
                SELECT q.namespace, q.name INTO m FROM {{s}}.messages q WHERE q.id = p_id;
                IF NOT FOUND THEN
                    RAISE EXCEPTION 'message % does not exist', p_id USING ERRCODE = '{{NotPendingSqlState}}';
                END IF;
                PERFORM {{s}}.assert_epoch(m.name, p_epoch, m.namespace);
                UPDATE {{s}}.messages q SET state = 'done', finished_at = clock_timestamp(), finished_epoch = p_epoch, reply = p_reply
                 WHERE q.id = p_id AND q.state = 'pending' AND q.taken_epoch = p_epoch
                RETURNING q.reply_channel, q.state INTO m;
                IF NOT FOUND THEN
                    SELECT q.state, q.taken_epoch INTO m FROM {{s}}.messages q WHERE q.id = p_id;
                    RAISE EXCEPTION 'message % is not pending for epoch % (state %, taken by epoch %)', p_id, p_epoch, m.state, m.taken_epoch
                        USING ERRCODE = '{{NotPendingSqlState}}',
                              HINT = 'A message is acknowledged once, by the leader that took it.';
                END IF;
                IF m.reply_channel IS NOT NULL THEN
                    v_text := coalesce(p_reply::text, 'null');
                    IF octet_length(v_text) <= 7000 THEN
                        PERFORM pg_notify(m.reply_channel, p_id || ' done ' || v_text);
                    ELSE
                        PERFORM pg_notify(m.reply_channel, p_id || ' done');
                    END IF;
                END IF;
            END
            $fn$;

            -- nack_message: a failed delivery (the child threw or refused it): redelivered, or dead-lettered after max_deliveries.
            CREATE OR REPLACE FUNCTION {{s}}.nack_message(p_id bigint, p_epoch bigint, p_error text)
            RETURNS text LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                m record;
                v_max integer;
            BEGIN
                SELECT q.* INTO m FROM {{s}}.messages q WHERE q.id = p_id AND q.state = 'pending' AND q.taken_epoch = p_epoch FOR UPDATE;
                IF NOT FOUND THEN
                    RETURN NULL;
                END IF;
                SELECT i.max_deliveries INTO v_max FROM {{s}}.inboxes i WHERE i.namespace = m.namespace AND i.name = m.name;
                IF m.deliveries >= coalesce(v_max, 2147483647) THEN
                    UPDATE {{s}}.messages SET state = 'dead', finished_at = clock_timestamp(), last_error = p_error WHERE messages.id = p_id;
                    IF m.reply_channel IS NOT NULL THEN
                        PERFORM pg_notify(m.reply_channel, p_id || ' dead');
                    END IF;
                    RETURN 'dead';
                END IF;
                UPDATE {{s}}.messages SET taken_epoch = NULL, last_error = p_error WHERE messages.id = p_id;
                PERFORM pg_notify('{{Channel(schema)}}', json_build_array(m.namespace, m.name)::text);
                RETURN 'pending';
            END
            $fn$;

            -- cancel_call: the caller gave up (timeout, cancellation). Not taken yet: expired, never processed. Taken:
            -- its deadline is now, so it is not delivered again. Returns the state and reply (a reply that won the race).
            CREATE OR REPLACE FUNCTION {{s}}.cancel_call(p_id bigint)
            RETURNS TABLE (state text, reply jsonb) LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            BEGIN
                UPDATE {{s}}.messages q
                   SET expires_at = least(q.expires_at, clock_timestamp()),
                       state = CASE WHEN q.taken_epoch IS NULL THEN 'expired' ELSE q.state END,
                       finished_at = CASE WHEN q.taken_epoch IS NULL THEN clock_timestamp() ELSE q.finished_at END
                 WHERE q.id = p_id AND q.state = 'pending';
                RETURN QUERY SELECT q.state, q.reply FROM {{s}}.messages q WHERE q.id = p_id;
            END
            $fn$;

            -- call_results: the state and reply of calls (a caller's look-up after a lost notification, or for a reply too long to notify).
            CREATE OR REPLACE FUNCTION {{s}}.call_results(p_ids bigint[])
            RETURNS TABLE (id bigint, state text, reply jsonb) LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
                SELECT q.id, q.state, q.reply FROM {{s}}.messages q WHERE q.id = ANY (p_ids) AND q.reply_channel IS NOT NULL;
            $fn$;

            -- replay_dead: puts dead letters back in the queue (all of a singleton's, or the given ids), with a fresh delivery count.
            CREATE OR REPLACE FUNCTION {{s}}.replay_dead(p_namespace text, p_name text, p_ids bigint[] DEFAULT NULL)
            RETURNS integer LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
            DECLARE
                v_count integer;
            BEGIN
                UPDATE {{s}}.messages q SET state = 'pending', deliveries = 0, taken_epoch = NULL, finished_at = NULL, expires_at = NULL
                 WHERE q.namespace = p_namespace AND q.name = p_name AND q.state = 'dead' AND (p_ids IS NULL OR q.id = ANY (p_ids));
                GET DIAGNOSTICS v_count = ROW_COUNT;
                IF v_count > 0 THEN
                    PERFORM pg_notify('{{Channel(schema)}}', json_build_array(p_namespace, p_name)::text);
                END IF;
                RETURN v_count;
            END
            $fn$;

            REVOKE EXECUTE ON FUNCTION {{s}}.send(text, text, jsonb, interval, text, text) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{s}}.take_message(text, text, bigint) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{s}}.ack_message(bigint, bigint, jsonb) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{s}}.nack_message(bigint, bigint, text) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{s}}.cancel_call(bigint) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{s}}.call_results(bigint[]) FROM PUBLIC;
            REVOKE EXECUTE ON FUNCTION {{s}}.replay_dead(text, text, bigint[]) FROM PUBLIC;
            """;
    }

    /// <summary>Whether the messaging objects exist in their current version (one parameter: the schema).</summary>
    public const string Exists = $"""
        SELECT coalesce(obj_description(to_regclass(quote_ident($1) || '.messages'), 'pg_class') = '{Version}', false)
        """;

    /// <summary>Registers (or updates) singletons for messages: namespace, names (text[]), limits, node id.</summary>
    public static string Register(string schema) => $"""
        INSERT INTO {Valid(schema)}.inboxes AS i (namespace, name, max_pending, max_deliveries, max_payload_bytes, default_ttl, registered_by, registered_at)
        SELECT $1, n, $3, $4, $5, $6, $7, clock_timestamp() FROM unnest($2::text[]) AS n
        ON CONFLICT (namespace, name) DO UPDATE
           SET max_pending = excluded.max_pending, max_deliveries = excluded.max_deliveries, max_payload_bytes = excluded.max_payload_bytes,
               default_ttl = excluded.default_ttl, registered_by = excluded.registered_by, registered_at = excluded.registered_at
        """;

    /// <summary>Deletes acknowledged and expired messages of a singleton finished longer ago than the retention: namespace, name, retention.</summary>
    public static string Purge(string schema) => $"""
        DELETE FROM {Valid(schema)}.messages WHERE id IN (
            SELECT id FROM {Valid(schema)}.messages
             WHERE namespace = $1 AND name = $2 AND state IN ('done', 'expired') AND finished_at < clock_timestamp() - $3::interval LIMIT 10000)
        """;

    /// <summary>Creates or upgrades the messaging objects unless current; concurrent nodes serialize on an advisory lock.</summary>
    public static Task EnsureCreatedAsync(NpgsqlConnection connection, string schema, CancellationToken cancellationToken) =>
        SchemaObjects.EnsureCurrentAsync(connection, schema, Exists, Ddl, cancellationToken);

    internal static string Valid(string schema) => FencingSql.IsValidSchema(schema)
        ? schema
        : throw new ArgumentException($"Schema '{schema}' must be {Fencing.FencingSql.SchemaRule}.", nameof(schema));
}
