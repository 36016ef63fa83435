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
    /// Tries every key in one statement (<c>pg_try_advisory_lock</c>, never blocking); returns the keys taken. Each row
    /// carries the backend pid, checked by <paramref name="checkPid"/> (a transaction-mode pooler changes it).
    /// </summary>
    public static async Task<List<long>> TryLockAsync(NpgsqlConnection connection, long[] keys, Action<int> checkPid)
    {
        var got = new List<long>();
        await using var cmd = new NpgsqlCommand("SELECT k, pg_try_advisory_lock(k), pg_backend_pid() FROM unnest($1::bigint[]) AS t(k)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
        await using var reader = await cmd.ExecuteReaderAsync().ConfigureAwait(false);
        while (await reader.ReadAsync().ConfigureAwait(false))
        {
            checkPid(reader.GetInt32(2));
            if (reader.GetBoolean(1))
            {
                got.Add(reader.GetInt64(0));
            }
        }

        return got;
    }

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

    /// <summary>Unlocks <paramref name="keys"/> and announces each release on <see cref="Channel"/>, in one statement.</summary>
    public static async Task<int> UnlockAndNotifyAsync(NpgsqlConnection connection, long[] keys)
    {
        await using var cmd = new NpgsqlCommand("SELECT k, pg_advisory_unlock(k), pg_notify($2, k::text) FROM unnest($1::bigint[]) AS t(k)", connection);
        cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = keys });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = Channel });
        return await cmd.ExecuteNonQueryAsync().ConfigureAwait(false);
    }

    /// <summary>The heartbeat: the backend pid (renews the server's idle timer; a changed pid betrays a transaction-mode pooler).</summary>
    public static async Task<int> BackendPidAsync(NpgsqlConnection connection)
    {
        await using var cmd = new NpgsqlCommand("SELECT pg_backend_pid()", connection);
        return (int)(await cmd.ExecuteScalarAsync().ConfigureAwait(false))!;
    }
}
