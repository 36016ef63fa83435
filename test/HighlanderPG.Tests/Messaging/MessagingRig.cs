using HighlanderPG.Messaging;
using HighlanderPG.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace HighlanderPG.Tests.Messaging;

/// <summary>
/// One messaging test's world: a fresh schema (fencing and messaging tables), an effects table, a cluster of in-process
/// nodes running the singleton <c>inbox</c> with a child the test gives, and a client that is not a node.
/// </summary>
public sealed class MessagingRig : IAsyncDisposable
{
    public const string Singleton = "inbox";

    public MessagingRig(string connectionString)
    {
        ConnectionString = connectionString;
        Schema = "m_" + Guid.NewGuid().ToString("N")[..10];
        Cluster = new TestCluster(connectionString);
        Client = new SingletonClient(new SingletonClientOptions { ConnectionString = connectionString, Namespace = Cluster.Namespace, Schema = Schema });
    }

    public string ConnectionString { get; }

    /// <summary>The test's own statements: unpooled, so a server restart leaves no broken connection in a pool.</summary>
    private string Unpooled => new NpgsqlConnectionStringBuilder(ConnectionString) { Pooling = false }.ConnectionString;

    public string Schema { get; }

    public string Effects => "public." + Schema + "_effects";

    public TestCluster Cluster { get; }

    public SingletonClient Client { get; }

    public long Key => SingletonKey.Derive(Cluster.Namespace, Singleton);

    /// <summary>Starts a node (fencing on, messaging on) whose child of <c>inbox</c> runs <paramref name="child"/> with its inbox.</summary>
    public Task<TestNode> StartNodeAsync(
        string nodeId,
        Func<ISingletonInbox, ILeadership, CancellationToken, Task> child,
        Action<HighlanderMessagingOptions>? messaging = null,
        Action<HighlanderOptions>? configure = null) =>
        Cluster.StartNodeAsync(nodeId, singletons: [], configure: o =>
        {
            o.Fencing = true;
            o.FencingSchema = Schema;
            configure?.Invoke(o);
        }, services: s =>
        {
            s.AddHighlanderMessaging(o =>
            {
                o.PollInterval = TimeSpan.FromSeconds(2);
                messaging?.Invoke(o);
            });
            s.AddClusterSingleton(Singleton, (leadership, sp, ct) => child(sp.GetRequiredService<ISingletonInbox>(), leadership, ct));
        });

    /// <summary>Creates the effects table (the messages' effects, written in the acknowledging transaction).</summary>
    public Task CreateEffectsAsync() => ExecAsync($"CREATE TABLE IF NOT EXISTS {Effects} (seq bigint GENERATED ALWAYS AS IDENTITY, message_id bigint NOT NULL, n integer NOT NULL, epoch bigint NOT NULL, node text NOT NULL, delivery integer NOT NULL)");

    /// <summary>The effect of one message, in the child's transaction.</summary>
    public static async Task WriteEffectAsync(string effects, InboxMessage message, ILeadership leadership, NpgsqlTransaction tx, CancellationToken ct, int? n = null)
    {
        await using var cmd = new NpgsqlCommand($"INSERT INTO {effects} (message_id, n, epoch, node, delivery) VALUES ($1, $2, $3, $4, $5)", tx.Connection, tx);
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = message.Id });
        cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = n ?? message.GetPayload<Item>().N });
        cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = leadership.FencingEpoch!.Value });
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = leadership.NodeId });
        cmd.Parameters.Add(new NpgsqlParameter<int> { TypedValue = message.Delivery });
        await cmd.ExecuteNonQueryAsync(ct);
    }

    /// <summary>The usual child: process every message by writing its effect; answer a call with its own payload.</summary>
    public Func<ISingletonInbox, ILeadership, CancellationToken, Task> EffectChild() =>
        (inbox, leadership, ct) => inbox.ProcessAsync(async (m, tx, t) =>
        {
            await WriteEffectAsync(Effects, m, leadership, tx, t);
            if (m.IsCall)
            {
                await inbox.ReplyAsync(m, m.GetPayload<Item>(), tx, t); // an echo
            }
        }, ct);

    public async Task ExecAsync(string sql, params object[] parameters)
    {
        await using var connection = new NpgsqlConnection(Unpooled);
        await connection.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, connection);
        foreach (var p in parameters)
        {
            cmd.Parameters.Add(new NpgsqlParameter { Value = p });
        }

        await cmd.ExecuteNonQueryAsync();
    }

    public Task<T?> ScalarAsync<T>(string sql, params object[] parameters) => Db.ScalarAsync<T>(ConnectionString, sql, parameters);

    public async Task<List<T>> ListAsync<T>(string sql, params object[] parameters)
    {
        await using var connection = new NpgsqlConnection(Unpooled);
        await connection.OpenAsync();
        await using var cmd = new NpgsqlCommand(sql, connection);
        foreach (var p in parameters)
        {
            cmd.Parameters.Add(new NpgsqlParameter { Value = p });
        }

        var list = new List<T>();
        await using var reader = await cmd.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            list.Add(reader.GetFieldValue<T>(0));
        }

        return list;
    }

    public Task<string?> StateAsync(long id) => ScalarAsync<string>($"SELECT state FROM {Schema}.messages WHERE id = $1", id);

    /// <summary>Polls the database until <paramref name="condition"/> holds (generous: the machine is loaded).</summary>
    public static async Task EventuallyAsync(Func<Task<bool>> condition, string what, TimeSpan? timeout = null)
    {
        using var cts = new CancellationTokenSource(timeout ?? TimeSpan.FromSeconds(60));
        while (!await condition())
        {
            if (cts.IsCancellationRequested)
            {
                throw new TimeoutException("Timed out waiting until " + what);
            }

            await Task.Delay(25);
        }
    }

    /// <summary>Registers the singleton without leading it: a node starts (registering it) and stops.</summary>
    public async Task RegisterWithoutLeaderAsync(Action<HighlanderMessagingOptions>? messaging = null)
    {
        var node = await StartNodeAsync("registrar", (_, _, ct) => Task.Delay(Timeout.Infinite, ct), messaging);
        await node.StopAsync();
    }

    public async ValueTask DisposeAsync()
    {
        await Client.DisposeAsync();
        await Cluster.DisposeAsync();
    }
}

public sealed record Item(int N);

public sealed record Question(int X);

public sealed record Answer(int Doubled, string By);
