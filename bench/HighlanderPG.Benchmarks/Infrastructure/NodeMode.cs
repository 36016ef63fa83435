using System.Diagnostics;
using System.Globalization;
using Medallion.Threading.Postgres;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace HighlanderPG.Benchmarks.Infrastructure;

/// <summary>
/// The hidden <c>node</c> verb: a holder process that takes the lock (or leads), prints <see cref="ReadyLine"/> and waits
/// to be killed. Kinds: <c>raw</c> (<c>pg_advisory_lock</c> on its own connection), <c>distributedlock</c>
/// (<see cref="PostgresDistributedLock"/>, optionally watching <c>HandleLostToken</c>) and <c>highlander</c> (a
/// HighlanderPG node with default options whose child prints READY) and <c>scale</c> (a HighlanderPG node with
/// <c>--count N</c> singletons named <see cref="SingletonName"/>, default options; it prints READY once its host has
/// started, then a line per child start and stop, <c>START name timestamp</c> / <c>STOP name timestamp</c>, with the
/// <see cref="Stopwatch"/> timestamp of the child's entry or return: CLOCK_MONOTONIC, comparable across the processes of
/// this machine, so the benchmark times take-overs without asking the database). A <c>scale</c> node stops gracefully on
/// SIGTERM (its host's console lifetime).
/// </summary>
internal static class NodeMode
{
    public const string Verb = "node";
    public const string ConnectionVariable = "HIGHLANDER_BENCH_NODE_CONNECTION";
    public const string ReadyLine = "READY";

    public static async Task<int> RunAsync(string[] args)
    {
        string? kind = null, name = null, @namespace = null, nodeId = null, placement = null;
        long key = 0;
        var count = 0;
        bool watchLost = false, verbose = false;
        for (var i = 0; i < args.Length; i++)
        {
            switch (args[i])
            {
                case "--kind": kind = args[++i]; break;
                case "--key": key = long.Parse(args[++i], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture); break;
                case "--name": name = args[++i]; break;
                case "--namespace": @namespace = args[++i]; break;
                case "--node-id": nodeId = args[++i]; break;
                case "--placement": placement = args[++i]; break;
                case "--count": count = int.Parse(args[++i], NumberStyles.None, CultureInfo.InvariantCulture); break;
                case "--watch-lost": watchLost = true; break;
                case "--verbose": verbose = true; break;
                default:
                    await Console.Error.WriteLineAsync($"node: unknown argument '{args[i]}'");
                    return 2;
            }
        }

        var connectionString = Environment.GetEnvironmentVariable(ConnectionVariable);
        if (string.IsNullOrEmpty(connectionString))
        {
            await Console.Error.WriteLineAsync($"node: {ConnectionVariable} is not set");
            return 2;
        }

        // The benchmark holds our standard input open; when it goes away (even killed), so do we.
        var parentGone = Task.Run(() =>
        {
            while (Console.In.ReadLine() is not null)
            {
            }
        });

        switch (kind)
        {
            case "raw":
                await RawAsync(connectionString, key, parentGone);
                return 0;
            case "distributedlock":
                await DistributedLockAsync(connectionString, key, watchLost, parentGone);
                return 0;
            case "highlander" when name is not null && @namespace is not null:
                await HighlanderAsync(connectionString, @namespace, name, verbose, parentGone);
                return 0;
            case "scale" when @namespace is not null && nodeId is not null && count > 0:
                await ScaleAsync(connectionString, @namespace, nodeId, count, verbose, parentGone, placement);
                return 0;
            default:
                await Console.Error.WriteLineAsync("node: --kind raw|distributedlock --key K, or --kind highlander --namespace NS --name N, or --kind scale --namespace NS --node-id ID --count N [--placement spread|firstcomer]");
                return 2;
        }
    }

    private static void Ready()
    {
        Console.Out.WriteLine(ReadyLine);
        Console.Out.Flush();
    }

    private static async Task RawAsync(string connectionString, long key, Task parentGone)
    {
        var builder = new NpgsqlConnectionStringBuilder(connectionString) { Pooling = false, ApplicationName = "bench-raw-holder" };
        await using var connection = new NpgsqlConnection(builder.ConnectionString);
        await connection.OpenAsync();
        await using (var cmd = new NpgsqlCommand("SELECT pg_advisory_lock($1)", connection))
        {
            cmd.Parameters.Add(new NpgsqlParameter<long> { TypedValue = key });
            await cmd.ExecuteNonQueryAsync();
        }

        Ready();
        await parentGone;
    }

    private static async Task DistributedLockAsync(string connectionString, long key, bool watchLost, Task parentGone)
    {
        // DistributedLock's defaults (multiplexing on, keepalive off), as a user would write it.
        var builder = new NpgsqlConnectionStringBuilder(connectionString) { ApplicationName = Cases.DistributedLockCases.HolderName(Environment.ProcessId) };
        var distributedLock = new PostgresDistributedLock(new PostgresAdvisoryLockKey(key), builder.ConnectionString);
        await using var handle = await distributedLock.AcquireAsync();
        if (watchLost)
        {
            // What a singleton runner does with DistributedLock: watch for the loss of the lock (this starts its monitor).
            handle.HandleLostToken.Register(() => Console.Error.WriteLine("lock lost"));
        }

        Ready();
        await parentGone;
    }

    private static async Task HighlanderAsync(string connectionString, string @namespace, string name, bool verbose, Task parentGone)
    {
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Warning);
        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = connectionString;
            o.Namespace = @namespace;
            o.NodeId = $"bench-proc-{Environment.ProcessId}";
        });
        builder.Services.AddClusterSingleton(name, async (_, _, stoppingToken) =>
        {
            Ready();
            await Task.Delay(Timeout.Infinite, stoppingToken).ContinueWith(_ => { }, TaskScheduler.Default);
        });
        using var host = builder.Build();
        await host.StartAsync();
        await parentGone;
        await host.StopAsync();
    }

    /// <summary>The name of a scale node's singleton number <paramref name="index"/>: s0000, s0001, ...</summary>
    public static string SingletonName(int index) => string.Create(CultureInfo.InvariantCulture, $"s{index:D4}");

    private static async Task ScaleAsync(string connectionString, string @namespace, string nodeId, int count, bool verbose, Task parentGone, string? placement)
    {
        var output = Console.Out; // synchronized, flushed at every line
        var builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace).SetMinimumLevel(verbose ? LogLevel.Information : LogLevel.Warning);
        builder.Services.AddHighlander(o =>
        {
            o.ConnectionString = connectionString;
            o.Namespace = @namespace;
            o.NodeId = nodeId;
            if (placement is not null)
            {
                o.Placement = Enum.Parse<SingletonPlacement>(placement, ignoreCase: true);
            }
        });
        for (var i = 0; i < count; i++)
        {
            var name = SingletonName(i);
            builder.Services.AddClusterSingleton(name, async (_, _, stoppingToken) =>
            {
                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"START {name} {Stopwatch.GetTimestamp()}"));
                try
                {
                    await Task.Delay(Timeout.Infinite, stoppingToken);
                }
                catch (OperationCanceledException)
                {
                    // Told to stop: return at once.
                }

                output.WriteLine(string.Create(CultureInfo.InvariantCulture, $"STOP {name} {Stopwatch.GetTimestamp()}"));
            });
        }

        using var host = builder.Build();
        await host.StartAsync();
        Ready();
        var lifetime = host.Services.GetRequiredService<IHostApplicationLifetime>();
        var stopping = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using (lifetime.ApplicationStopping.Register(() => stopping.TrySetResult()))
        {
            await Task.WhenAny(parentGone, stopping.Task);
        }

        await host.StopAsync();
    }
}
