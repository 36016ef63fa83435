using System.Globalization;
using Npgsql;

namespace HighlanderPG.Leasing;

/// <summary>
/// The lock protocol's statements on the lock session's connection: one round trip each, every value a parameter.
/// The session loop runs them (bounded by its deadline); they keep no state.
/// </summary>
internal static class LockProtocol
{
    /// <summary>The channel on which a release is announced (payload: the key), so that waiting nodes try at once.</summary>
    public const string Channel = "highlander";

    /// <summary>Listens for release announcements on <see cref="Channel"/>.</summary>
    public static async Task ListenAsync(NpgsqlConnection connection, CancellationToken cancellationToken)
    {
        await using var cmd = new NpgsqlCommand($"LISTEN {Channel}", connection);
        await cmd.ExecuteNonQueryAsync(cancellationToken).ConfigureAwait(false);
    }

    /// <summary>
    /// Tries keys in one statement (<c>pg_try_advisory_lock</c>, never blocking): every key of <paramref name="all"/>, then
    /// the keys of <paramref name="limited"/> in array order until <paramref name="limit"/> of them are taken (the spread
    /// placement's room below the share: a filtered scan under a <c>LIMIT</c> evaluates its rows in order and stops at the
    /// limit, so the keys after that are not tried at all). Returns the keys taken and the server's clock, read once before
    /// any key is tried. When that reading is past <paramref name="notAfter"/> (the server's clock stepped forward, see
    /// <see cref="ServerClock"/>) no key is tried at all and the result is marked refused. The reply is one row whatever the
    /// number of keys (the keys taken, usually none or all), so that every follower trying a thousand keys after a crash
    /// costs the server and itself one row each, not a thousand. It carries the backend pid, checked by
    /// <paramref name="checkPid"/> (a transaction-mode pooler changes it).
    /// </summary>
    public static async Task<TryResult> TryLockAsync(NpgsqlConnection connection, long[] all, long[] limited, int limit, DateTime? notAfter, Action<int> checkPid)
    {
        // Each key is tried at most once (MATERIALIZED CTEs), after the one reading of the clock. CASE, not AND, keeps the
        // clock's verdict ahead of the try (the planner may reorder the operands of AND).
        await using var cmd = new NpgsqlCommand("""
            WITH c AS MATERIALIZED (SELECT clock_timestamp() AS now),
                 ok AS MATERIALIZED (SELECT $2::timestamptz IS NULL OR c.now <= $2::timestamptz AS ok FROM c),
                 a AS MATERIALIZED (
                     SELECT u.k FROM ok, unnest($1::bigint[]) AS u(k)
                     WHERE CASE WHEN ok.ok THEN pg_try_advisory_lock(u.k) ELSE false END),
                 b AS MATERIALIZED (
                     SELECT u.k FROM ok, unnest($3::bigint[]) AS u(k)
                     WHERE CASE WHEN ok.ok THEN pg_try_advisory_lock(u.k) ELSE false END
                     LIMIT $4)
            SELECT coalesce((SELECT array_agg(k) FROM a), '{}') || coalesce((SELECT array_agg(k) FROM b), '{}'),
                   NOT (SELECT ok FROM ok), pg_backend_pid(), (SELECT now FROM c)
            """, connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = all });
        cmd.Parameters.Add(new NpgsqlParameter { Value = notAfter is { } bound ? bound : DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.TimestampTz });
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = limited });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = limit });
        await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
        await reader.ReadAsync().ConfigureAwait(false);
        checkPid(reader.GetInt32(2));
        return new TryResult([.. reader.GetFieldValue<long[]>(0)], reader.GetDateTime(3), reader.GetBoolean(1));
    }

    /// <summary>Tries every one of <paramref name="keys"/> (<see cref="TryLockAsync(NpgsqlConnection, long[], long[], int, DateTime?, Action{int})"/> with nothing limited).</summary>
    public static Task<TryResult> TryLockAsync(NpgsqlConnection connection, long[] keys, DateTime? notAfter, Action<int> checkPid) =>
        TryLockAsync(connection, keys, [], 0, notAfter, checkPid);

    /// <summary>What a try statement did: the keys taken, the server's clock, and whether it refused to try (clock stepped).</summary>
    public readonly record struct TryResult(List<long> Got, DateTime ServerTime, bool Refused);

    /// <summary>Who holds <paramref name="keys"/> (<see cref="HolderQuery"/>), leaving out this session's own backend.</summary>
    public static async Task<Dictionary<long, LeaderInfo>> HoldersAsync(NpgsqlConnection connection, long[] keys, int ownBackendPid)
    {
        var holders = new Dictionary<long, LeaderInfo>();
        await using var cmd = new NpgsqlCommand(HolderQuery.Sql, connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
        await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
        while (await reader.ReadAsync().ConfigureAwait(false))
        {
            var info = HolderQuery.Read(reader);
            if (info.Leader.BackendPid != ownBackendPid)
            {
                holders[info.Key] = info.Leader;
            }
        }

        return holders;
    }

    /// <summary>Keys per release announcement: a payload stays well under PostgreSQL's 8000 bytes (a key is at most 20 characters and a comma).</summary>
    public const int KeysPerAnnouncement = 300;

    /// <summary>
    /// Unlocks <paramref name="keys"/> and announces the releases on <see cref="Channel"/>, in one statement: one
    /// notification per <see cref="KeysPerAnnouncement"/> keys (payload: the keys, comma-separated), so that a node
    /// releasing a thousand singletons wakes each follower a few times, not a thousand. Notifications are delivered
    /// at commit, after every unlock.
    /// </summary>
    public static async Task<int> UnlockAndNotifyAsync(NpgsqlConnection connection, long[] keys)
    {
        var payloads = keys.Chunk(KeysPerAnnouncement).Select(chunk => string.Join(',', chunk.Select(k => k.ToString(CultureInfo.InvariantCulture)))).ToArray();
        await using var cmd = new NpgsqlCommand("""
            WITH unlocked AS (SELECT pg_advisory_unlock(k) AS ok FROM unnest($1::bigint[]) AS t(k))
            SELECT count(*) FILTER (WHERE ok), (SELECT count(pg_notify($2, p)) FROM unnest($3::text[]) AS n(p)) FROM unlocked
            """, connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Channel });
        cmd.Parameters.Add(new NpgsqlParameter<string[]> { TypedValue = payloads });
        await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
        await reader.ReadAsync().ConfigureAwait(false);
        return (int)reader.GetInt64(0);
    }

    /// <summary>The keys of a release announcement (comma-separated; a single key from nodes before batched announcements).</summary>
    public static IEnumerable<long> ParseAnnouncement(string payload)
    {
        foreach (var part in payload.Split(','))
        {
            if (long.TryParse(part, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out var key))
            {
                yield return key;
            }
        }
    }

    /// <summary>
    /// The heartbeat: the backend pid (renews the server's idle timer; a changed pid betrays a transaction-mode pooler)
    /// and the server's clock (<see cref="ServerClock"/>).
    /// </summary>
    public static async Task<(int Pid, DateTime ServerTime)> HeartbeatAsync(NpgsqlConnection connection)
    {
        await using var cmd = new NpgsqlCommand("SELECT pg_backend_pid(), clock_timestamp()", connection);
        await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
        await reader.ReadAsync().ConfigureAwait(false);
        return (reader.GetInt32(0), reader.GetDateTime(1));
    }
}
