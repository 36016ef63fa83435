using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using HighlanderPG.Testing;
using HighlanderPG.TestKit.Network;
using Npgsql;

namespace HighlanderPG.FaultRun;

internal static partial class Native
{
    public const int SigKill = 9;
    public const int SigTerm = 15;
    public const int SigCont = 18;
    public const int SigStop = 19;

    [LibraryImport("libc", EntryPoint = "kill", SetLastError = true)]
    private static partial int Kill(int pid, int signal);

    public static bool Signal(int pid, int signal) => pid > 1 && Kill(pid, signal) == 0;

    [StructLayout(LayoutKind.Sequential)]
    private struct Timespec
    {
        public long Seconds;
        public long Nanoseconds;
    }

    [LibraryImport("libc", EntryPoint = "clock_gettime", SetLastError = true)]
    private static partial int ClockGetTime(int clock, out Timespec time);

    [LibraryImport("libc", EntryPoint = "clock_settime", SetLastError = true)]
    private static partial int ClockSetTime(int clock, in Timespec time);

    /// <summary>
    /// Steps the machine's wall clock (CLOCK_REALTIME: every process, the PostgreSQL server too) by
    /// <paramref name="seconds"/>; false when not permitted (needs CAP_SYS_TIME). CLOCK_MONOTONIC does not move.
    /// </summary>
    public static bool StepWallClock(long seconds)
    {
        if (ClockGetTime(0, out var now) != 0)
        {
            return false;
        }

        now.Seconds += seconds;
        return ClockSetTime(0, in now) == 0;
    }

    /// <summary>Alive and not a zombie.</summary>
    public static bool Alive(int pid)
    {
        try
        {
            var stat = File.ReadAllText($"/proc/{pid}/stat");
            var state = stat[(stat.LastIndexOf(')') + 2)..];
            return state.Length > 0 && state[0] is not ('Z' or 'X');
        }
        catch (IOException)
        {
            return false;
        }
        catch (UnauthorizedAccessException)
        {
            return false;
        }
    }

    /// <summary>Every live descendant of <paramref name="root"/> (from /proc), deepest last.</summary>
    public static List<int> Descendants(int root)
    {
        var parents = new Dictionary<int, int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
            {
                continue;
            }

            try
            {
                var stat = File.ReadAllText(Path.Combine(dir, "stat"));
                var rest = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                parents[pid] = int.Parse(rest[1], CultureInfo.InvariantCulture);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException or FormatException or IndexOutOfRangeException or ArgumentOutOfRangeException)
            {
            }
        }

        var result = new List<int>();
        var frontier = new Queue<int>([root]);
        while (frontier.Count > 0)
        {
            var p = frontier.Dequeue();
            foreach (var (child, parent) in parents)
            {
                if (parent == p)
                {
                    result.Add(child);
                    frontier.Enqueue(child);
                }
            }
        }

        return result;
    }
}

internal enum HostKind
{
    Library,
    Cli,
}

/// <summary>One process the coordinator keeps running (a supervisor restarts it when it ends, unless held down).</summary>
internal sealed class ManagedProcess(Host host, string node, string? singleton, ProcessStartInfo start, HistoryWriter history)
{
    private readonly SemaphoreSlim _released = new(0, int.MaxValue);
    private volatile bool _heldDown;
    private Process? _process;

    public Host Host { get; } = host;
    public string Node { get; } = node;
    public string? Singleton { get; } = singleton;
    public int Pid
    {
        get
        {
            try
            {
                return _process is { } p && !p.HasExited ? p.Id : 0;
            }
            catch (InvalidOperationException)
            {
                return 0;
            }
        }
    }

    public long StartedAt { get; private set; }
    public Task Supervision { get; private set; } = Task.CompletedTask;
    public TaskCompletionSource Exited { get; private set; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public void Supervise(CancellationToken stop) => Supervision = Task.Run(() => LoopAsync(stop), CancellationToken.None);

    public void HoldDown() => _heldDown = true;

    public void Release()
    {
        _heldDown = false;
        _released.Release();
    }

    private async Task LoopAsync(CancellationToken stop)
    {
        while (!stop.IsCancellationRequested)
        {
            Exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
            var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {start.FileName}");
            _process = process;
            StartedAt = Mono.Now();
            history.Write("proc-start", Singleton, detail: $"node={Node};pid={process.Id}");
            await process.WaitForExitAsync(CancellationToken.None);
            history.Write("proc-exit", Singleton, detail: $"node={Node};pid={process.Id};code={process.ExitCode}");
            _process = null;
            Exited.TrySetResult();
            process.Dispose();
            if (stop.IsCancellationRequested)
            {
                return;
            }

            while (_heldDown && !stop.IsCancellationRequested)
            {
                try
                {
                    await _released.WaitAsync(TimeSpan.FromSeconds(1), stop);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }

            try
            {
                await Task.Delay(300, stop);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>The process and every descendant (the CLI's command runs in a session of its own).</summary>
    public List<int> Pids()
    {
        var pid = Pid;
        if (pid == 0)
        {
            return [];
        }

        var all = Native.Descendants(pid);
        all.Insert(0, pid);
        return all;
    }
}

/// <summary>A "host": its processes, its own network link (or proxy), its own fake wall clock and starvation switch.</summary>
internal sealed class Host(string name, HostKind kind, int index)
{
    public string Name { get; } = name;
    public HostKind Kind { get; } = kind;
    public int Index { get; } = index;
    public string ConnectionString { get; set; } = "";
    public NetworkLink? Link { get; set; }
    public FaultProxy? Proxy { get; set; }
    public string? ClockFile { get; set; }
    public string StarveFile { get; set; } = "";
    public List<ManagedProcess> Processes { get; } = [];

    public List<int> AllPids() => [.. Processes.SelectMany(p => p.Pids()).Distinct()];

    public bool AllUp => Processes.All(p => p.Pid != 0);

    public async Task PartitionAsync()
    {
        if (Link is not null)
        {
            await Link.PartitionAsync();
        }
        else
        {
            Proxy!.SetMode(ProxyMode.Blackhole);
        }
    }

    public async Task HealAsync()
    {
        if (Link is not null)
        {
            await Link.HealAsync();
        }
        else
        {
            Proxy!.SetMode(ProxyMode.Pass);
        }
    }
}

/// <summary>The server, the network between it and the hosts, and the hosts' processes.</summary>
internal sealed class Cluster : IAsyncDisposable
{
    public const string FakeTimeLibrary = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1";

    private readonly Settings _settings;
    private readonly CancellationTokenSource _stop = new();
    private NetworkLab? _lab;

    private Cluster(Settings settings, string directory, HistoryWriter history)
    {
        _settings = settings;
        Directory = directory;
        History = history;
    }

    public string Directory { get; }
    public HistoryWriter History { get; }
    public LocalPostgresServer? Server { get; private set; }
    public string AdminConnectionString { get; private set; } = "";
    public List<Host> Hosts { get; } = [];
    public List<string> Singletons { get; } = [];
    public string PartitionMethod { get; private set; } = "";
    public string? ClockUnavailable { get; private set; }

    /// <summary>Clock jumps step the machine's real wall clock (every process and the server), not libfaketime's.</summary>
    public bool RealClockSteps { get; private set; }
    public string ServerVersion { get; private set; } = "";

    public static async Task<Cluster> StartAsync(Settings settings, string directory, HistoryWriter history, Action<string> say)
    {
        var cluster = new Cluster(settings, directory, history);
        try
        {
            await cluster.StartCoreAsync(say);
            return cluster;
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
    }

    private async Task StartCoreAsync(Action<string> say)
    {
        for (var i = 0; i < _settings.Singletons; i++)
        {
            Singletons.Add(string.Create(CultureInfo.InvariantCulture, $"s{i:000}"));
        }

        var libraryHosts = _settings.Nodes - _settings.CliHosts;
        for (var i = 0; i < _settings.Nodes; i++)
        {
            Hosts.Add(new Host(string.Create(CultureInfo.InvariantCulture, $"h{i}"), i < libraryHosts ? HostKind.Library : HostKind.Cli, i));
        }

        var settingsForServer = new Dictionary<string, string> { ["max_connections"] = "400", ["log_min_messages"] = "warning" };
        if (_settings.Connection is null && NetworkLab.IsSupported(out var why))
        {
            _lab = await NetworkLab.CreateAsync(_settings.Nodes + 1);
            var options = NetworkLab.ServerOptions(_lab.NamespaceName, string.Join(',', _lab.Links.Select(l => l.NamespaceAddress)));
            foreach (var (k, v) in settingsForServer)
            {
                options.ExtraSettings[k] = v;
            }

            Server = await LocalPostgresServer.StartAsync(options);
            AdminConnectionString = WithHost(Server.ConnectionString, _lab.Links[_settings.Nodes].NamespaceAddress, Server.Port);
            foreach (var host in Hosts)
            {
                host.Link = _lab.Links[host.Index];
                host.ConnectionString = WithHost(Server.ConnectionString, host.Link.NamespaceAddress, Server.Port);
            }

            PartitionMethod = "netns+iptables (TestKit NetworkLab: every packet of the host's veth link dropped)";
        }
        else
        {
            var reason = _settings.Connection is null ? (NetworkLab.IsSupported(out var r) ? "" : r) : "a given server: no network namespace around it";
            if (_settings.Connection is null)
            {
                var options = new LocalPostgresOptions();
                foreach (var (k, v) in settingsForServer)
                {
                    options.ExtraSettings[k] = v;
                }

                Server = await LocalPostgresServer.StartAsync(options);
                AdminConnectionString = Server.ConnectionString;
            }
            else
            {
                AdminConnectionString = _settings.Connection;
            }

            var b = new NpgsqlConnectionStringBuilder(AdminConnectionString);
            foreach (var host in Hosts)
            {
                host.Proxy = FaultProxy.Start(b.Host ?? "127.0.0.1", b.Port);
                host.ConnectionString = host.Proxy.ConnectionString(AdminConnectionString);
            }

            PartitionMethod = $"FaultProxy blackhole (application-level cut-off; {reason})";
        }

        await using (var conn = new NpgsqlConnection(AdminConnectionString))
        {
            await conn.OpenAsync();
            ServerVersion = conn.PostgreSqlVersion.ToString();
            await using var cmd = new NpgsqlCommand("""
                CREATE SCHEMA IF NOT EXISTS faultrun;
                DROP TABLE IF EXISTS faultrun.guarded, faultrun.unguarded;
                CREATE TABLE faultrun.guarded (id bigserial PRIMARY KEY, singleton text NOT NULL, epoch bigint NOT NULL, host text NOT NULL, node text NOT NULL, pid int NOT NULL, mono bigint NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
                CREATE TABLE faultrun.unguarded (LIKE faultrun.guarded INCLUDING ALL);
                """, conn);
            await cmd.ExecuteNonQueryAsync();
        }

        System.IO.Directory.CreateDirectory(RunEnvironment.LockDirectory(Directory));
        System.IO.Directory.CreateDirectory(Path.Combine(Directory, "clock"));
        System.IO.Directory.CreateDirectory(Path.Combine(Directory, "logs"));
        // A real step of the machine's wall clock where permitted (root with CAP_SYS_TIME: stepping by 0 s tells); else
        // libfaketime on one host, only when asked for (--faketime-clock-jumps), since it fakes more than a wall-clock step.
        RealClockSteps = !_settings.NoClock && Native.StepWallClock(0);
        ClockUnavailable = _settings.NoClock
            ? "off (--no-clock-jumps)"
            : RealClockSteps ? null
            : !_settings.FakeTimeClock ? "the machine's wall clock cannot be stepped here (needs root with CAP_SYS_TIME); libfaketime, preloaded into a .NET node, also wraps its monotonic waits (seen here: after a jump the node's 500 ms sleep loop spun at ~10,000 iterations/s), so it fakes more than a wall-clock step: opt in with --faketime-clock-jumps (docs/fault-run.md)"
            : File.Exists(FakeTimeLibrary) ? null : $"libfaketime is not installed ({FakeTimeLibrary} missing; apt-get install faketime)";
        foreach (var host in Hosts)
        {
            host.StarveFile = Path.Combine(Directory, "starve-" + host.Name);
            // libfaketime wraps every clock call of the process (about 10 % of a core per idle .NET process on this machine):
            // preloaded on the one host whose wall clock jumps, the first library host.
            if (ClockUnavailable is null && !RealClockSteps && host.Index == 0)
            {
                host.ClockFile = Path.Combine(Directory, "clock", host.Name);
                await File.WriteAllTextAsync(host.ClockFile, "+0\n");
            }

            if (host.Kind == HostKind.Library)
            {
                var node = "faultrun-" + host.Name;
                host.Processes.Add(new ManagedProcess(host, node, null, NodeStart(host, node), History));
            }
            else
            {
                foreach (var singleton in Singletons.Take(_settings.CliSingletons))
                {
                    var node = $"faultrun-{host.Name}-{singleton}";
                    host.Processes.Add(new ManagedProcess(host, node, singleton, CliStart(host, node, singleton), History));
                }
            }
        }

        foreach (var p in Hosts.SelectMany(h => h.Processes))
        {
            // One at a time: nine .NET processes starting at once on two cores miss their first heartbeats.
            p.Supervise(_stop.Token);
            await Task.Delay(700);
        }

        say($"server {ServerVersion}; partitions: {PartitionMethod}; clock jumps: {ClockUnavailable ?? (RealClockSteps ? "the machine's wall clock stepped (clock_settime CLOCK_REALTIME) and stepped back" : "libfaketime (FAKETIME_TIMESTAMP_FILE, monotonic clock not faked)")}");
    }

    private static string WithHost(string cs, string host, int port) =>
        new NpgsqlConnectionStringBuilder(cs) { Host = host, Port = port }.ConnectionString;

    private ProcessStartInfo Wrap(Host host, string program, IEnumerable<string> arguments, string log)
    {
        // setsid: not in our process group (a terminal's Ctrl-C is ours to handle); exec keeps the pid.
        var start = new ProcessStartInfo("setsid") { UseShellExecute = false };
        foreach (var a in (string[])["--", "sh", "-c", "exec \"$@\" >>\"$FAULTRUN_LOG\" 2>&1", "sh", program, .. arguments])
        {
            start.ArgumentList.Add(a);
        }

        start.Environment["FAULTRUN_LOG"] = log;
        start.Environment[RunEnvironment.Directory] = Directory;
        start.Environment[RunEnvironment.Host] = host.Name;
        start.Environment[RunEnvironment.Connection] = host.ConnectionString;
        start.Environment[RunEnvironment.LeaseMilliseconds] = ((int)_settings.Lease.TotalMilliseconds).ToString(CultureInfo.InvariantCulture);
        start.Environment["DOTNET_gcServer"] = "0";
        start.Environment["DOTNET_TieredPGO"] = "0";
        if (host.ClockFile is not null)
        {
            start.Environment["LD_PRELOAD"] = FakeTimeLibrary;
            start.Environment["FAKETIME_TIMESTAMP_FILE"] = host.ClockFile;
            start.Environment["FAKETIME_CACHE_DURATION"] = "1";
            start.Environment["FAKETIME_DONT_FAKE_MONOTONIC"] = "1";
            // No shared-memory semaphore around every clock call (libfaketime's default costs ~10 % of a core per idle process).
            start.Environment["FAKETIME_DISABLE_SHM"] = "1";
        }

        return start;
    }

    private ProcessStartInfo NodeStart(Host host, string node)
    {
        var start = Wrap(host, Path.Combine(AppContext.BaseDirectory, "HighlanderPG.FaultRun"), ["node"], Path.Combine(Directory, "logs", node + ".log"));
        start.Environment[RunEnvironment.Node] = node;
        start.Environment[RunEnvironment.Singletons] = string.Join(',', Singletons);
        start.Environment[RunEnvironment.StarveFile] = host.StarveFile;
        return start;
    }

    private ProcessStartInfo CliStart(Host host, string node, string singleton)
    {
        var (heartbeat, stop, margin) = NodeTimings.For(_settings.Lease);
        static string Ms(TimeSpan t) => ((int)t.TotalMilliseconds).ToString(CultureInfo.InvariantCulture) + "ms";
        string[] args =
        [
            Path.Combine(AppContext.BaseDirectory, "highlander.dll"), "run", "--name", singleton, "--connection", host.ConnectionString,
            "--namespace", "faultrun", "--node-id", node, "--lease", Ms(_settings.Lease), "--heartbeat", Ms(heartbeat), "--stop-timeout", Ms(stop),
            "--safety-margin", Ms(margin), "--fencing", "--max-restarts", "100000", "--restart-delay", "200ms", "--log-level", "warning",
            "--", Path.Combine(AppContext.BaseDirectory, "HighlanderPG.FaultRun"), "child",
        ];
        return Wrap(host, "dotnet", args, Path.Combine(Directory, "logs", node + ".log"));
    }

    /// <summary>
    /// Whether the round can start: every process of the round's targets has its lock session on the server
    /// (application_name highlander/{node}), and so does at least one library host that the round leaves alone, so that
    /// every singleton has somewhere to go. Other hosts may still be restarting.
    /// </summary>
    public async Task<bool> ReadyForAsync(IReadOnlyCollection<int> targets, bool global, CancellationToken cancel)
    {
        try
        {
            await using var conn = new NpgsqlConnection(AdminConnectionString);
            await conn.OpenAsync(cancel);
            await using var cmd = new NpgsqlCommand("SELECT DISTINCT application_name FROM pg_stat_activity WHERE application_name LIKE 'highlander/%'", conn);
            var connected = new HashSet<string>(StringComparer.Ordinal);
            await using (var reader = await cmd.ExecuteReaderAsync(cancel))
            {
                while (await reader.ReadAsync(cancel))
                {
                    connected.Add(reader.GetString(0));
                }
            }

            bool Up(Host h) => h.Processes.All(p => connected.Contains("highlander/" + p.Node));
            return global
                ? Hosts.All(Up)
                : targets.All(t => Up(Hosts[t])) && Hosts.Any(h => h.Kind == HostKind.Library && !targets.Contains(h.Index) && Up(h));
        }
        catch (NpgsqlException)
        {
            return false;
        }
    }

    /// <summary>
    /// Waits, at most <paramref name="within"/>, until <paramref name="node"/>'s lock session is connected (a node may still
    /// be reconnecting after the fault of the round before): a termination then has a session to end.
    /// </summary>
    public async Task WaitForLockSessionAsync(string node, TimeSpan within, CancellationToken cancellationToken)
    {
        var until = DateTime.UtcNow + within;
        while (DateTime.UtcNow < until)
        {
            await using var conn = new NpgsqlConnection(AdminConnectionString);
            await conn.OpenAsync(cancellationToken);
            await using var cmd = new NpgsqlCommand("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", conn);
            cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = "highlander/" + node });
            if (Convert.ToInt64(await cmd.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture) > 0)
            {
                return;
            }

            await Task.Delay(100, cancellationToken);
        }
    }

    public async Task<int> TerminateLockSessionAsync(string node)
    {
        await using var conn = new NpgsqlConnection(AdminConnectionString);
        await conn.OpenAsync();
        await using var cmd = new NpgsqlCommand("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", conn);
        cmd.Parameters.Add(new NpgsqlParameter<string> { TypedValue = "highlander/" + node });
        return Convert.ToInt32(await cmd.ExecuteScalarAsync(), CultureInfo.InvariantCulture);
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        foreach (var host in Hosts)
        {
            foreach (var pid in host.AllPids())
            {
                Native.Signal(pid, Native.SigCont);
            }

            foreach (var pid in host.AllPids())
            {
                Native.Signal(pid, Native.SigKill);
            }

            try
            {
                File.Delete(host.StarveFile);
            }
            catch (IOException)
            {
            }
        }

        await Task.WhenAny(Task.WhenAll(Hosts.SelectMany(h => h.Processes).Select(p => p.Supervision)), Task.Delay(10_000));
        foreach (var host in Hosts)
        {
            if (host.Proxy is not null)
            {
                await host.Proxy.DisposeAsync();
            }
        }

        if (Server is not null)
        {
            await Server.DisposeAsync();
        }

        if (_lab is not null)
        {
            await _lab.DisposeAsync();
        }

        _stop.Dispose();
    }
}
