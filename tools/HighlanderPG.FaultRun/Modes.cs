using System.Globalization;
using System.Runtime.InteropServices;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace HighlanderPG.FaultRun;

/// <summary>The environment the coordinator gives its node processes (and, through <c>highlander run</c>, their commands).</summary>
internal static class RunEnvironment
{
    public const string Directory = "FAULTRUN_DIR";
    public const string Host = "FAULTRUN_HOST";
    public const string Node = "FAULTRUN_NODE";
    public const string Connection = "FAULTRUN_CONNECTION";
    public const string Singletons = "FAULTRUN_SINGLETONS";
    public const string LeaseMilliseconds = "FAULTRUN_LEASE_MS";
    public const string StarveFile = "FAULTRUN_STARVE_FILE";

    public static string Require(string name) =>
        Environment.GetEnvironmentVariable(name) is { Length: > 0 } v ? v : throw new InvalidOperationException($"{name} is not set (hidden modes are started by the fault run only).");

    public static string HistoryDirectory(string runDirectory) => Path.Combine(runDirectory, "history");

    public static string LockDirectory(string runDirectory) => Path.Combine(runDirectory, "locks");
}

/// <summary>Timings of every node (library and CLI): fencing on, a short lease, so that faults resolve quickly.</summary>
internal static class NodeTimings
{
    /// <summary>2 × heartbeat + stop timeout + margin = lease: heartbeat, stop timeout and margin are a quarter each.</summary>
    public static (TimeSpan Heartbeat, TimeSpan Stop, TimeSpan Margin) For(TimeSpan lease) =>
        (lease / 4, lease / 4, lease / 4);
}

/// <summary>Hidden mode <c>node</c>: a library node (AddHighlander + AddClusterSingleton) running every singleton.</summary>
internal static class NodeMode
{
    public static async Task<int> RunAsync()
    {
        var dir = RunEnvironment.Require(RunEnvironment.Directory);
        var host = RunEnvironment.Require(RunEnvironment.Host);
        var node = RunEnvironment.Require(RunEnvironment.Node);
        var connection = RunEnvironment.Require(RunEnvironment.Connection);
        var names = RunEnvironment.Require(RunEnvironment.Singletons).Split(',');
        var lease = TimeSpan.FromMilliseconds(int.Parse(RunEnvironment.Require(RunEnvironment.LeaseMilliseconds), CultureInfo.InvariantCulture));
        var starveFile = Environment.GetEnvironmentVariable(RunEnvironment.StarveFile);
        using var history = new HistoryWriter(RunEnvironment.HistoryDirectory(dir), "node", host, node);
        await using var data = ChildWork.DataSource(connection, "faultrun-child/" + node);
        var lockDirectory = RunEnvironment.LockDirectory(dir);

        var builder = Microsoft.Extensions.Hosting.Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.ClearProviders();
        builder.Logging.AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.UseUtcTimestamp = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
        });
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Services.AddHighlander(o =>
        {
            var (heartbeat, stop, margin) = NodeTimings.For(lease);
            o.ConnectionString = connection;
            o.NodeId = node;
            o.Namespace = "faultrun";
            o.Fencing = true;
            o.LeaseDuration = lease;
            o.HeartbeatInterval = heartbeat;
            o.StopTimeout = stop;
            o.SafetyMargin = margin;
            o.ReconnectMaxDelay = TimeSpan.FromSeconds(1);
            o.SingletonDefaults.RestartDelay = TimeSpan.FromMilliseconds(200);
            o.SingletonDefaults.MaxRestarts = 100_000;
        });
        foreach (var name in names)
        {
            builder.Services.AddClusterSingleton(name, (leadership, _, stop) =>
                ChildWork.RunAsync(history, data, lockDirectory, leadership.Name, leadership.FencingEpoch ?? 0, leadership.Namespace, stop));
        }

        using var app = builder.Build();
        if (starveFile is not null)
        {
            new Thread(() => StarveWhenAsked(starveFile, history)) { IsBackground = true, Name = "faultrun-starve" }.Start();
        }

        var alive = new Thread(() => Alive(history)) { IsBackground = true, Name = "faultrun-alive" };
        alive.Start();
        history.Write("ready");
        await app.RunAsync();
        history.Write("exit");
        return 0;
    }

    /// <summary>Every 500 ms, on a thread of its own: the process is alive and not frozen, with its wall clock (for clock jumps).</summary>
    private static void Alive(HistoryWriter history)
    {
        while (true)
        {
            history.Write("alive", detail: DateTimeOffset.UtcNow.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture));
            Thread.Sleep(500);
        }
    }

    /// <summary>Thread-pool starvation as test/HighlanderPG.TestNode does it: the pool capped, every pool thread blocked for good.</summary>
    private static void StarveWhenAsked(string file, HistoryWriter history)
    {
        while (!File.Exists(file))
        {
            Thread.Sleep(50);
        }

        ThreadPool.GetMaxThreads(out _, out var io);
        ThreadPool.SetMaxThreads(Environment.ProcessorCount, io);
        for (var i = 0; i < Environment.ProcessorCount * 4; i++)
        {
            ThreadPool.UnsafeQueueUserWorkItem(static _ => Thread.Sleep(Timeout.Infinite), null);
        }

        history.Write("starving");
    }
}

/// <summary>Hidden mode <c>child</c>: the command of <c>highlander run</c>, from the HIGHLANDER_* environment the CLI gives it.</summary>
internal static class ChildMode
{
    public static async Task<int> RunAsync()
    {
        var dir = RunEnvironment.Require(RunEnvironment.Directory);
        var host = RunEnvironment.Require(RunEnvironment.Host);
        var connection = RunEnvironment.Require(RunEnvironment.Connection);
        var name = RunEnvironment.Require("HIGHLANDER_NAME");
        var node = RunEnvironment.Require("HIGHLANDER_NODE");
        var ns = Environment.GetEnvironmentVariable("HIGHLANDER_NAMESPACE") ?? "highlander";
        var epoch = long.Parse(RunEnvironment.Require("HIGHLANDER_FENCING_TOKEN"), CultureInfo.InvariantCulture);
        using var history = new HistoryWriter(RunEnvironment.HistoryDirectory(dir), "child", host, node);
        await using var data = ChildWork.DataSource(connection, "faultrun-child/" + node);
        using var stop = new CancellationTokenSource();
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; stop.Cancel(); });
        using var intr = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; stop.Cancel(); });
        await ChildWork.RunAsync(history, data, RunEnvironment.LockDirectory(dir), name, epoch, ns, stop.Token);
        return 0;
    }
}
