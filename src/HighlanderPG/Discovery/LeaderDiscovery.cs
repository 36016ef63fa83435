using HighlanderPG.Fencing;
using HighlanderPG.Leasing;
using Npgsql;

namespace HighlanderPG.Discovery;

/// <summary>One singleton held in the database, as any process with database access sees it.</summary>
public sealed class SingletonLeader
{
    internal SingletonLeader(long key, string? name, string? @namespace, LeaderInfo leader, DateTimeOffset? since, long? fencingEpoch, string? endpoint, string? host, IReadOnlyList<LeaderInfo> followers, string? detailsUnavailable = null)
    {
        Key = key;
        Name = name;
        Namespace = @namespace;
        Leader = leader;
        Since = since;
        FencingEpoch = fencingEpoch;
        Endpoint = endpoint;
        Host = host;
        Followers = followers;
        DetailsUnavailable = detailsUnavailable;
    }

    /// <summary>The advisory lock key.</summary>
    public long Key { get; }

    /// <summary>The singleton's name, when known (from the names given, or from the fencing table).</summary>
    public string? Name { get; }

    /// <summary>Its namespace, when known.</summary>
    public string? Namespace { get; }

    /// <summary>The holding session: node id (from <c>application_name</c>), backend pid, client address, session start.</summary>
    public LeaderInfo Leader { get; }

    /// <summary>When the leader acquired it (from the fencing table); otherwise <see langword="null"/>.</summary>
    public DateTimeOffset? Since { get; }

    /// <summary>The current fencing epoch (from the fencing table), when fencing is on.</summary>
    public long? FencingEpoch { get; }

    /// <summary>The endpoint the leader published (<see cref="HighlanderOptions.Endpoint"/>), when fencing is on.</summary>
    public string? Endpoint { get; }

    /// <summary>The leader's host name as it published it, when fencing is on.</summary>
    public string? Host { get; }

    /// <summary>Followers seen waiting for the lock right now (a follower waits on one held key at a time).</summary>
    public IReadOnlyList<LeaderInfo> Followers { get; }

    /// <summary>
    /// Why the fencing table's details (<see cref="Name"/> when not given, <see cref="Since"/>, <see cref="FencingEpoch"/>,
    /// <see cref="Endpoint"/>, <see cref="Host"/>) are missing although the table exists: the caller's role may not read it
    /// (the grant that adds them is named). The rest comes from <c>pg_locks</c> as without the table.
    /// <see langword="null"/> when the table was read, or does not exist.
    /// </summary>
    public string? DetailsUnavailable { get; }
}

/// <summary>
/// Finds who leads which singleton, from any process with database access, participant or not: "finding your process".
/// </summary>
/// <remarks>
/// Without the fencing table it reads <c>pg_locks</c> joined with <c>pg_stat_activity</c> (HighlanderPG lock sessions are
/// named <c>highlander/{NodeId}</c>); with it (<see cref="HighlanderOptions.Fencing"/>), it adds name, epoch, since, host
/// and endpoint — but only from a row whose <c>holder_pid</c> is the session that holds the lock right now, so a stale
/// row is never reported as the leader. When the table exists but the caller may not read it (a writer role has only
/// <c>EXECUTE</c> on the guard function), the answer comes from <c>pg_locks</c> alone and
/// <see cref="SingletonLeader.DetailsUnavailable"/> says which grant would add the rest; nothing is thrown, and no
/// failed statement aborts the caller's transaction. Reusing a data source or an open connection avoids a new physical
/// connection per call.
/// </remarks>
public static class LeaderDiscovery
{
    /// <summary>Every singleton held by a HighlanderPG node in the database of <paramref name="connectionString"/>.</summary>
    /// <param name="connectionString">
    /// Any connection string to the database. With several hosts (<c>Host=a,b</c>) it connects to the primary, whatever
    /// <c>Target Session Attributes</c> says (<c>read-write</c> and <c>prefer-primary</c> are kept): a standby holds no lock.
    /// </param>
    /// <param name="names">Names to recognise (their keys are derived in <paramref name="namespace"/>); optional.</param>
    /// <param name="namespace">The namespace of <paramref name="names"/>.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="cancellationToken">Cancels the query.</param>
    public static async Task<IReadOnlyList<SingletonLeader>> ListAsync(
        string connectionString,
        IEnumerable<string>? names = null,
        string @namespace = "highlander",
        string fencingSchema = "highlander",
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connectionString);
        // With several hosts, the primary whatever Target Session Attributes says: the locks live there only.
        var builder = Hosting.ConnectionSettings.ForClient(connectionString, nameof(connectionString));
        builder.Pooling = false;
        builder.ApplicationName = "highlander-discovery";
        // A data source of its own: a NpgsqlConnection shares one per connection string, whose memory of which host was a
        // standby (kept for Host Recheck Seconds) would skip a standby promoted meanwhile.
        await using var dataSource = NpgsqlDataSource.Create(builder);
        await using var connection = await dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        return await ListAsync(connection, names, @namespace, fencingSchema, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Who leads <paramref name="name"/> now, or <see langword="null"/> when nobody does.</summary>
    /// <param name="connectionString">Any connection string to the database.</param>
    /// <param name="name">The singleton's name.</param>
    /// <param name="namespace">Its namespace.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="cancellationToken">Cancels the query.</param>
    public static async Task<SingletonLeader?> GetLeaderAsync(
        string connectionString,
        string name,
        string @namespace = "highlander",
        string fencingSchema = "highlander",
        CancellationToken cancellationToken = default)
    {
        var key = SingletonKey.Derive(@namespace, name);
        var all = await ListAsync(connectionString, [name], @namespace, fencingSchema, cancellationToken).ConfigureAwait(false);
        return all.FirstOrDefault(l => l.Key == key);
    }

    /// <summary>Who leads <paramref name="name"/> now, on a connection from the caller's data source (pooled if it is).</summary>
    /// <param name="dataSource">A data source of the database.</param>
    /// <param name="name">The singleton's name.</param>
    /// <param name="namespace">Its namespace.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="cancellationToken">Cancels the query.</param>
    public static async Task<SingletonLeader?> GetLeaderAsync(
        NpgsqlDataSource dataSource,
        string name,
        string @namespace = "highlander",
        string fencingSchema = "highlander",
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(dataSource);
        await using var connection = await dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        return await GetLeaderAsync(connection, name, @namespace, fencingSchema, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Who leads <paramref name="name"/> now, on an open connection of the caller's (in its transaction, if any).</summary>
    /// <param name="connection">An open connection.</param>
    /// <param name="name">The singleton's name.</param>
    /// <param name="namespace">Its namespace.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="cancellationToken">Cancels the query.</param>
    public static async Task<SingletonLeader?> GetLeaderAsync(
        NpgsqlConnection connection,
        string name,
        string @namespace = "highlander",
        string fencingSchema = "highlander",
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(name);
        var key = SingletonKey.Derive(@namespace, name);
        var all = await ListAsync(connection, [name], @namespace, fencingSchema, cancellationToken).ConfigureAwait(false);
        return all.FirstOrDefault(l => l.Key == key);
    }

    /// <summary>Every singleton held by a HighlanderPG node, on a connection from the caller's data source (pooled if it is).</summary>
    /// <param name="dataSource">A data source of the database.</param>
    /// <param name="names">Names to recognise; optional.</param>
    /// <param name="namespace">The namespace of <paramref name="names"/>.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="cancellationToken">Cancels the query.</param>
    public static async Task<IReadOnlyList<SingletonLeader>> ListAsync(
        NpgsqlDataSource dataSource,
        IEnumerable<string>? names = null,
        string @namespace = "highlander",
        string fencingSchema = "highlander",
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(dataSource);
        await using var connection = await dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        return await ListAsync(connection, names, @namespace, fencingSchema, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The same on an open connection of the caller's (in its transaction, if any).</summary>
    /// <param name="connection">An open connection.</param>
    /// <param name="names">Names to recognise; optional.</param>
    /// <param name="namespace">The namespace of <paramref name="names"/>.</param>
    /// <param name="fencingSchema">The fencing schema to read, if it exists.</param>
    /// <param name="cancellationToken">Cancels the query.</param>
    public static async Task<IReadOnlyList<SingletonLeader>> ListAsync(
        NpgsqlConnection connection,
        IEnumerable<string>? names = null,
        string @namespace = "highlander",
        string fencingSchema = "highlander",
        CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        if (!FencingSql.IsValidSchema(fencingSchema))
        {
            throw new ArgumentException($"Fencing schema '{fencingSchema}' must be {FencingSql.SchemaRule}.", nameof(fencingSchema));
        }

        var known = (names ?? []).Distinct().ToDictionary(n => SingletonKey.Derive(@namespace, n), n => n);
        var holders = new Dictionary<long, LeaderInfo>();
        var followers = new Dictionary<long, List<LeaderInfo>>();
        await using (var cmd = new NpgsqlCommand(
            """
            SELECT ((l.classid::bigint << 32) | l.objid::bigint) AS key, l.pid, a.application_name, host(a.client_addr), a.backend_start, l.granted, l.mode
            FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.objsubid = 1
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND (a.application_name LIKE 'highlander/%' OR a.application_name LIKE 'highlander-wait/%')
            ORDER BY a.backend_start
            """,
            connection))
        await using (var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
        {
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                var (key, info) = HolderQuery.Read(reader);
                var owner = info.NodeId ?? (info.ApplicationName?.StartsWith(HolderQuery.WaiterApplicationNamePrefix, StringComparison.Ordinal) == true
                    ? info.ApplicationName[HolderQuery.WaiterApplicationNamePrefix.Length..]
                    : null);
                if (owner is not null && Hosting.HighlanderNode.IsRehearsalKey(owner, key))
                {
                    continue; // the node's own take-over rehearsal, for a moment: not a singleton (docs/lease-protocol.md, "Rehearsal")
                }

                var granted = reader.GetBoolean(5);
                var exclusive = reader.GetString(6) == "ExclusiveLock";
                if (granted && exclusive && info.NodeId is not null)
                {
                    holders[key] = info;
                }
                else if (!granted && info.ApplicationName?.StartsWith(HolderQuery.WaiterApplicationNamePrefix, StringComparison.Ordinal) == true)
                {
                    var node = info.ApplicationName[HolderQuery.WaiterApplicationNamePrefix.Length..];
                    (followers.TryGetValue(key, out var list) ? list : followers[key] = []).Add(new LeaderInfo(node, info.BackendPid, info.ApplicationName, info.ClientAddress, info.SessionStarted));
                }
            }
        }

        var rows = new Dictionary<long, (string Namespace, string Name, long Epoch, string? Endpoint, string? Host, int Pid, DateTimeOffset Since)>();

        // The catalogs are readable by every role, and the privilege functions answer without raising: a caller without
        // rights on the table gets the pg_locks answer and a note, instead of 42501 (which would also abort its transaction).
        bool tableExists, schemaUsable = false, tableReadable = false;
        await using (var exists = new NpgsqlCommand(
            """
            SELECT has_schema_privilege(n.oid, 'USAGE'), has_table_privilege(c.oid, 'SELECT')
            FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = $1 AND c.relname = 'leases' AND c.relkind IN ('r', 'p')
            """,
            connection))
        {
            exists.Parameters.Add(new NpgsqlParameter<string> { TypedValue = fencingSchema });
            await using var reader = await exists.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            tableExists = await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            if (tableExists)
            {
                schemaUsable = reader.GetBoolean(0);
                tableReadable = reader.GetBoolean(1);
            }
        }

        string? unavailable = null;
        if (tableExists && !(schemaUsable && tableReadable))
        {
            var grant = schemaUsable
                ? $"GRANT SELECT ON {fencingSchema}.leases"
                : tableReadable ? $"GRANT USAGE ON SCHEMA {fencingSchema}" : $"GRANT USAGE ON SCHEMA {fencingSchema} and GRANT SELECT ON {fencingSchema}.leases";
            unavailable = $"The fencing table {fencingSchema}.leases exists but this role may not read it: name, epoch, since, host and endpoint are missing and the leaders come from pg_locks alone. {grant} to this role would add them.";
            tableExists = false;
        }

        if (tableExists && holders.Count > 0)
        {
            await using var cmd = new NpgsqlCommand($"SELECT key, namespace, name, epoch, endpoint, host, holder_pid, acquired_at FROM {fencingSchema}.leases WHERE key = ANY($1)", connection);
            cmd.Parameters.Add(new NpgsqlParameter<long[]> { TypedValue = [.. holders.Keys] });
            await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
            {
                rows[reader.GetInt64(0)] = (reader.GetString(1), reader.GetString(2), reader.GetInt64(3),
                    reader.IsDBNull(4) ? null : reader.GetString(4), reader.IsDBNull(5) ? null : reader.GetString(5),
                    reader.GetInt32(6), reader.GetFieldValue<DateTimeOffset>(7));
            }
        }

        return holders.Select(h =>
        {
            var row = rows.TryGetValue(h.Key, out var r) && r.Pid == h.Value.BackendPid ? r : ((string Namespace, string Name, long Epoch, string? Endpoint, string? Host, int Pid, DateTimeOffset Since)?)null;
            var name = row?.Name ?? known.GetValueOrDefault(h.Key);
            var ns = row?.Namespace ?? (known.ContainsKey(h.Key) ? @namespace : null);
            return new SingletonLeader(h.Key, name, ns, h.Value, row?.Since, row?.Epoch, row?.Endpoint, row?.Host, followers.GetValueOrDefault(h.Key) ?? [], unavailable);
        })
        .OrderBy(l => l.Name ?? "\uffff").ThenBy(l => l.Key)
        .ToList();
    }
}
