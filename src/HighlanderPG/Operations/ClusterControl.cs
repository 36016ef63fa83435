using HighlanderPG.Discovery;
using HighlanderPG.Fencing;
using Npgsql;

namespace HighlanderPG.Operations;

/// <summary>
/// Moves singletons on purpose from any process with database access, without being a node: makes the leader of a
/// singleton step down (<see cref="StepDownAsync"/>), every singleton leave a node before a deploy
/// (<see cref="DrainAsync"/>), and ends a node's hold-offs (<see cref="UndrainAsync"/>). Authorized by database
/// privileges alone: each call runs a SECURITY DEFINER function of the fencing schema (<c>step_down</c>, <c>drain</c>,
/// <c>undrain</c>) whose EXECUTE is revoked from PUBLIC; grant it to the roles that may move singletons.
/// </summary>
/// <remarks>
/// The request is durable (a row in <c>{schema}.hold_offs</c>) and announced to the node (NOTIFY): the node stops the
/// child, releases the lock, tells the others, and does not take the singleton (or, drained, any singleton) again until
/// the hold-off ends, also across its own restarts. See docs/operations.md, "Step down and drain".
/// </remarks>
public sealed class ClusterControl : IAsyncDisposable
{
    /// <summary>The hold-off of a step-down when none is given.</summary>
    public static readonly TimeSpan DefaultStepDownHoldOff = TimeSpan.FromMinutes(1);

    /// <summary>The hold-off of a drain when none is given.</summary>
    public static readonly TimeSpan DefaultDrainHoldOff = TimeSpan.FromMinutes(10);

    private readonly NpgsqlDataSource _dataSource;
    private readonly bool _ownsDataSource;
    private readonly TimeProvider _time;

    /// <summary>Controls the cluster whose nodes use <paramref name="dataSource"/>'s database.</summary>
    /// <param name="dataSource">A data source for the nodes' database (not disposed by this object).</param>
    /// <param name="namespace">The nodes' <see cref="HighlanderOptions.Namespace"/> (singleton names are hashed in it).</param>
    /// <param name="schema">The nodes' <see cref="HighlanderOptions.FencingSchema"/>.</param>
    /// <param name="time">The clock of <see cref="WaitMovedAsync"/>'s polls (default: the system's).</param>
    public ClusterControl(NpgsqlDataSource dataSource, string @namespace = "highlander", string schema = "highlander", TimeProvider? time = null)
    {
        ArgumentNullException.ThrowIfNull(dataSource);
        if (string.IsNullOrWhiteSpace(@namespace))
        {
            throw new ArgumentException("The namespace must not be blank: give the nodes' HighlanderOptions.Namespace.", nameof(@namespace));
        }

        if (!FencingSql.IsValidSchema(schema))
        {
            throw new ArgumentException($"Schema '{schema}' must be {FencingSql.SchemaRule}: give the nodes' FencingSchema.", nameof(schema));
        }

        _dataSource = dataSource;
        Namespace = @namespace;
        Schema = schema;
        _time = time ?? TimeProvider.System;
    }

    /// <summary>
    /// Controls the cluster whose nodes use the database of <paramref name="connectionString"/> (a data source of its own,
    /// disposed with this object; with several hosts, aimed at the primary). A malformed connection string is refused
    /// with an <see cref="ArgumentException"/> that names what is wrong, never its values.
    /// </summary>
    public ClusterControl(string connectionString, string @namespace = "highlander", string schema = "highlander")
        : this(NpgsqlDataSource.Create(Hosting.ConnectionSettings.ForClient(connectionString ?? throw new ArgumentNullException(nameof(connectionString)), nameof(connectionString))), @namespace, schema)
    {
        _ownsDataSource = true;
    }

    /// <summary>The namespace singleton names are hashed in.</summary>
    public string Namespace { get; }

    /// <summary>The schema of the control functions (the nodes' fencing schema).</summary>
    public string Schema { get; }

    /// <summary>
    /// The SQL that creates (or upgrades) the control objects in <paramref name="schema"/>: for a DBA to run as the
    /// schema's owner when the nodes' role may not (nodes with fencing on create them themselves).
    /// </summary>
    public static string GetDdl(string schema = "highlander") => ControlSql.Ddl(schema);

    /// <summary>
    /// Makes the node that leads <paramref name="name"/> (or <paramref name="node"/>, which must lead it) step down
    /// gracefully and not take it back for <paramref name="holdOff"/>. Returns once the request is recorded and
    /// announced; <see cref="WaitMovedAsync"/> waits until it runs elsewhere.
    /// </summary>
    /// <param name="name">The singleton's name (hashed in <see cref="Namespace"/>).</param>
    /// <param name="node">The node expected to lead it; <see langword="null"/>: whoever leads it.</param>
    /// <param name="holdOff">How long that node must not take it again (default <see cref="DefaultStepDownHoldOff"/>; zero: it may contend at once).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <exception cref="ClusterControlException">Nobody leads it, the node named does not (the message names who does), or the role may not (the message names the GRANT).</exception>
    public async Task<StepDownResult> StepDownAsync(string name, string? node = null, TimeSpan? holdOff = null, CancellationToken cancellationToken = default)
    {
        if (string.IsNullOrWhiteSpace(name))
        {
            throw new ArgumentException("The singleton's name must not be blank.", nameof(name));
        }

        CheckNode(node, nameof(node), optional: true);
        var hold = CheckHoldOff(holdOff ?? DefaultStepDownHoldOff, nameof(holdOff));
        var key = SingletonKey.Derive(Namespace, name);
        return await RunAsync(ControlSql.StepDownSignature(Schema), "step down singletons", async connection =>
        {
            await using var cmd = new NpgsqlCommand($"SELECT node_id, until, now() FROM {Schema}.step_down($1, $2, $3, $4)", connection);
            cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
            cmd.Parameters.Add(new NpgsqlParameter { Value = (object?)node ?? DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
            cmd.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = hold });
            cmd.Parameters.Add(new NpgsqlParameter { Value = DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
            string leader;
            DateTimeOffset until;
            await using (var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false))
            {
                await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
                leader = reader.GetString(0);
                until = reader.GetFieldValue<DateTimeOffset>(1);
            }

            var snapshot = await ClusterSnapshot.ReadAsync(connection, Namespace, Schema, [name], cancellationToken).ConfigureAwait(false);
            return new StepDownResult(name, key, leader, until, OtherNodes(snapshot, leader));
        }, cancellationToken, (name, key)).ConfigureAwait(false);
    }

    /// <summary>
    /// Makes <paramref name="node"/> step down gracefully from every singleton it leads and take none until
    /// <paramref name="holdOff"/> has passed (or <see cref="UndrainAsync"/>); it keeps following meanwhile, and a restart
    /// does not end the drain. Returns once the request is recorded and announced, with the singletons the node led.
    /// </summary>
    /// <param name="node">The node id (as <c>highlander status</c> shows it): a live node, or the call fails (a typo).</param>
    /// <param name="holdOff">How long the node takes nothing (default <see cref="DefaultDrainHoldOff"/>).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <exception cref="ClusterControlException">No live node has that id, or the role may not (the message names the GRANT).</exception>
    public async Task<DrainResult> DrainAsync(string node, TimeSpan? holdOff = null, CancellationToken cancellationToken = default)
    {
        CheckNode(node, nameof(node), optional: false);
        var hold = CheckHoldOff(holdOff ?? DefaultDrainHoldOff, nameof(holdOff));
        return await RunAsync(ControlSql.DrainSignature(Schema), "drain nodes", async connection =>
        {
            // Read first: the names and the other nodes, before the node lets its singletons go.
            var before = await ClusterSnapshot.ReadAsync(connection, Namespace, Schema, null, cancellationToken).ConfigureAwait(false);
            await using var cmd = new NpgsqlCommand($"SELECT until, keys FROM {Schema}.drain($1, $2, $3)", connection);
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = node });
            cmd.Parameters.Add(new NpgsqlParameter<TimeSpan> { TypedValue = hold });
            cmd.Parameters.Add(new NpgsqlParameter { Value = DBNull.Value, NpgsqlDbType = NpgsqlTypes.NpgsqlDbType.Text });
            await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
            await reader.ReadAsync(cancellationToken).ConfigureAwait(false);
            var until = reader.GetFieldValue<DateTimeOffset>(0);
            // Not a take-over rehearsal's private keys, held for a moment if the node was rehearsing: no singleton's.
            var keys = reader.GetFieldValue<long[]>(1).Where(k => !Hosting.HighlanderNode.IsRehearsalKey(node, k));
            var led = keys.Select(k => before.Singletons.FirstOrDefault(s => s.Key == k)
                ?? new ClusterSingleton(k, null, null, null, null, null, null, null, null, null, [])).ToList();
            return new DrainResult(node, until, led, OtherNodes(before, node));
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>Ends every hold-off of <paramref name="node"/> (its drain and step-downs) at once; returns how many were ended.</summary>
    /// <param name="node">The node id (need not be live: a node down while drained is undrained for when it comes back).</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    public async Task<int> UndrainAsync(string node, CancellationToken cancellationToken = default)
    {
        CheckNode(node, nameof(node), optional: false);
        return await RunAsync(ControlSql.UndrainSignature(Schema), "undrain nodes", async connection =>
        {
            await using var cmd = new NpgsqlCommand($"SELECT {Schema}.undrain($1)", connection);
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = node });
            return (int)(await cmd.ExecuteScalarAsync(cancellationToken).ConfigureAwait(false))!;
        }, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>The hold-offs running now (drains and step-downs), oldest first; none when the control objects do not exist.</summary>
    public async Task<IReadOnlyList<HoldOff>> GetHoldOffsAsync(CancellationToken cancellationToken = default)
    {
        var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            return await ReadHoldOffsAsync(connection, Schema, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>
    /// The hold-offs running now in <paramref name="schema"/>, on an open connection of the caller's; none when the control
    /// objects do not exist. Needs <c>USAGE</c> on the schema (the table is readable by every role).
    /// </summary>
    public static async Task<IReadOnlyList<HoldOff>> ReadHoldOffsAsync(NpgsqlConnection connection, string schema = "highlander", CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(connection);
        if (!await ControlSql.ExistAsync(connection, schema, cancellationToken).ConfigureAwait(false))
        {
            return [];
        }

        var list = new List<HoldOff>();
        await using var cmd = new NpgsqlCommand(
            $"SELECT node_id, key, until, requested_by, requested_at, reason FROM {Messaging.MessagingSql.Valid(schema)}.hold_offs WHERE until > clock_timestamp() ORDER BY id",
            connection);
        await using var reader = await cmd.ExecuteReaderAsync(cancellationToken).ConfigureAwait(false);
        while (await reader.ReadAsync(cancellationToken).ConfigureAwait(false))
        {
            list.Add(new HoldOff(
                reader.GetString(0),
                reader.IsDBNull(1) ? null : reader.GetInt64(1),
                reader.GetFieldValue<DateTimeOffset>(2),
                reader.GetString(3),
                reader.GetFieldValue<DateTimeOffset>(4),
                reader.IsDBNull(5) ? null : reader.GetString(5)));
        }

        return list;
    }

    /// <summary>
    /// Waits until none of <paramref name="keys"/> is led by <paramref name="fromNode"/> and each is led by another node
    /// (reading <see cref="ClusterSnapshot"/> every <paramref name="pollInterval"/>, default 200 ms). Bound it with
    /// <paramref name="cancellationToken"/>. Returns those singletons as last read (named when the fencing table or
    /// <paramref name="names"/> know them).
    /// </summary>
    public async Task<IReadOnlyList<ClusterSingleton>> WaitMovedAsync(string fromNode, IReadOnlyCollection<long> keys, IEnumerable<string>? names = null, TimeSpan? pollInterval = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(fromNode);
        ArgumentNullException.ThrowIfNull(keys);
        var poll = pollInterval ?? TimeSpan.FromMilliseconds(200);
        while (true)
        {
            var now = await ReadMovedAsync(keys, names, cancellationToken).ConfigureAwait(false);
            if (now.All(s => s.Leader is { } leader && leader.NodeId != fromNode))
            {
                return now;
            }

            await Task.Delay(poll, _time, cancellationToken).ConfigureAwait(false);
        }
    }

    /// <summary>Where <paramref name="keys"/> are now (one snapshot; named when the fencing table or <paramref name="names"/> know them).</summary>
    public async Task<IReadOnlyList<ClusterSingleton>> ReadMovedAsync(IReadOnlyCollection<long> keys, IEnumerable<string>? names = null, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(keys);
        var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            var snapshot = await ClusterSnapshot.ReadAsync(connection, Namespace, Schema, names, cancellationToken).ConfigureAwait(false);
            return [.. keys.Select(k => snapshot.Singletons.FirstOrDefault(s => s.Key == k)
                ?? new ClusterSingleton(k, null, null, null, null, null, null, null, null, null, []))];
        }
    }

    /// <inheritdoc/>
    public async ValueTask DisposeAsync()
    {
        if (_ownsDataSource)
        {
            await _dataSource.DisposeAsync().ConfigureAwait(false);
        }
    }

    private static List<string> OtherNodes(ClusterSnapshot snapshot, string node) =>
        [.. snapshot.Nodes.Where(n => n.NodeId != node && n.LockSessions.Count > 0).Select(n => n.NodeId)];

    private static void CheckNode(string? node, string parameter, bool optional)
    {
        if (node is null && optional)
        {
            return;
        }

        if (string.IsNullOrWhiteSpace(node))
        {
            throw new ArgumentException("The node id must not be blank: give a node id as highlander status shows it.", parameter);
        }
    }

    private static TimeSpan CheckHoldOff(TimeSpan holdOff, string parameter) => holdOff < TimeSpan.Zero
        ? throw new ArgumentOutOfRangeException(parameter, holdOff, "The hold-off must be zero or positive.")
        : holdOff;

    /// <summary>
    /// Runs one request on a connection of its own; a missing control schema is created when this role may (else the
    /// error says who must), a missing privilege is reported with the GRANT to run.
    /// </summary>
    private async Task<T> RunAsync<T>(string signature, string what, Func<NpgsqlConnection, Task<T>> request, CancellationToken cancellationToken, (string Name, long Key)? singleton = null)
    {
        var connection = await _dataSource.OpenConnectionAsync(cancellationToken).ConfigureAwait(false);
        await using (connection.ConfigureAwait(false))
        {
            bool exist;
            try
            {
                exist = await ControlSql.ExistAsync(connection, Schema, cancellationToken).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.InsufficientPrivilege)
            {
                exist = true; // no USAGE on the schema: the request below says what to grant
            }

            try
            {
                if (!exist)
                {
                    await ControlSql.EnsureCreatedAsync(connection, Schema, cancellationToken).ConfigureAwait(false);
                }
            }
            catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.InsufficientPrivilege)
            {
                throw new ClusterControlException(
                    $"The control functions do not exist (or are of an older version) in schema {Schema}, and this role may not create them ({ex.MessageText}). " +
                    "Start a node with Fencing on, or run ClusterControl.GetDdl() as the schema's owner (docs/operations.md).", ex.SqlState, ex);
            }

            try
            {
                return await request(connection).ConfigureAwait(false);
            }
            catch (PostgresException ex) when (ex.SqlState == PostgresErrorCodes.InsufficientPrivilege)
            {
                var role = connection.UserName ?? "this role";
                throw new ClusterControlException(
                    $"Role {role} may not {what} ({ex.MessageText}): it needs USAGE on schema {Schema} and EXECUTE on {signature}. As the schema's owner, run: " +
                    $"GRANT USAGE ON SCHEMA {Schema} TO {role}; GRANT EXECUTE ON FUNCTION {signature} TO {role};",
                    ex.SqlState, ex);
            }
            catch (PostgresException ex) when (ex.SqlState is ControlSql.NobodyLeadsSqlState or ControlSql.NotLeaderSqlState or ControlSql.UnknownNodeSqlState or ControlSql.BadArgumentSqlState)
            {
                // The server knows the key only: name the singleton as the caller did.
                var message = singleton is { } named
                    ? ex.MessageText.Replace($"singleton key {named.Key}", $"singleton '{named.Name}' (key {named.Key})", StringComparison.Ordinal)
                    : ex.MessageText;
                throw new ClusterControlException(message + (ex.Hint is { } hint ? ". " + hint : ""), ex.SqlState, ex);
            }
        }
    }
}

/// <summary>What <see cref="ClusterControl.StepDownAsync"/> did.</summary>
public sealed class StepDownResult
{
    internal StepDownResult(string name, long key, string nodeId, DateTimeOffset holdOffUntil, IReadOnlyList<string> otherNodes)
    {
        Name = name;
        Key = key;
        NodeId = nodeId;
        HoldOffUntil = holdOffUntil;
        OtherNodes = otherNodes;
    }

    /// <summary>The singleton.</summary>
    public string Name { get; }

    /// <summary>Its advisory key.</summary>
    public long Key { get; }

    /// <summary>The node asked to step down (the one leading it).</summary>
    public string NodeId { get; }

    /// <summary>Until when (the database server's clock) that node does not take it again.</summary>
    public DateTimeOffset HoldOffUntil { get; }

    /// <summary>The other live nodes (one of them may take it over); empty: it runs nowhere until the hold-off ends.</summary>
    public IReadOnlyList<string> OtherNodes { get; }
}

/// <summary>What <see cref="ClusterControl.DrainAsync"/> did.</summary>
public sealed class DrainResult
{
    internal DrainResult(string nodeId, DateTimeOffset holdOffUntil, IReadOnlyList<ClusterSingleton> singletons, IReadOnlyList<string> otherNodes)
    {
        NodeId = nodeId;
        HoldOffUntil = holdOffUntil;
        Singletons = singletons;
        OtherNodes = otherNodes;
    }

    /// <summary>The drained node.</summary>
    public string NodeId { get; }

    /// <summary>Until when (the database server's clock) it takes no singleton.</summary>
    public DateTimeOffset HoldOffUntil { get; }

    /// <summary>The singletons it led when drained (they step down now).</summary>
    public IReadOnlyList<ClusterSingleton> Singletons { get; }

    /// <summary>The other live nodes; empty: the drained node's singletons run nowhere until the hold-off ends.</summary>
    public IReadOnlyList<string> OtherNodes { get; }
}

/// <summary>One running hold-off: a node may not lead a singleton (or, drained, any) until <see cref="Until"/>.</summary>
public sealed class HoldOff
{
    internal HoldOff(string nodeId, long? key, DateTimeOffset until, string requestedBy, DateTimeOffset requestedAt, string? reason)
    {
        NodeId = nodeId;
        Key = key;
        Until = until;
        RequestedBy = requestedBy;
        RequestedAt = requestedAt;
        Reason = reason;
    }

    /// <summary>The node held off.</summary>
    public string NodeId { get; }

    /// <summary>The singleton's key (a step-down), or <see langword="null"/>: every singleton (a drain).</summary>
    public long? Key { get; }

    /// <summary>When it ends (the database server's clock).</summary>
    public DateTimeOffset Until { get; }

    /// <summary>The database role that asked.</summary>
    public string RequestedBy { get; }

    /// <summary>When it was asked (the database server's clock).</summary>
    public DateTimeOffset RequestedAt { get; }

    /// <summary>The reason given, if any.</summary>
    public string? Reason { get; }
}

/// <summary>A step-down, drain or undrain request was refused: the message says why and what to do.</summary>
public sealed class ClusterControlException : Exception
{
    /// <summary>Creates the exception.</summary>
    public ClusterControlException(string message, string? sqlState, Exception? innerException)
        : base(message, innerException)
    {
        SqlState = sqlState;
    }

    /// <summary>
    /// The server's SQLSTATE: <c>HL020</c> nobody leads the singleton, <c>HL021</c> the node named does not lead it,
    /// <c>HL022</c> no live node has that id, <c>HL023</c> a bad argument, <c>42501</c> a missing privilege.
    /// </summary>
    public string? SqlState { get; }
}
