using HighlanderPG.Cli.Configuration;
using HighlanderPG.Cli.Processes;
using HighlanderPG.Testing;
using HighlanderPG.Testing.Journal;
using Npgsql;

namespace HighlanderPG.Cli.Demo;

/// <summary>
/// What the demo runs on: a PostgreSQL (a throwaway one, or the one given), one fault proxy per node, three
/// <c>highlander run</c> node processes of this same tool (logging JSON, so the demo reads their events by id), and the
/// journal their children write their lives to. Sets it all up and takes it all down.
/// </summary>
internal sealed class DemoCluster(DemoView view, ResolvedConnection? external, Action<DemoNode, string> onNodeLine)
{
    public const string SingletonName = "demo";
    public const string NodeLease = "3s";
    public static readonly TimeSpan Lease = TimeSpan.FromSeconds(3);
    private static readonly string[] NodeIds = ["n1", "n2", "n3"];

    private readonly List<DemoNode> _nodes = [];

    public IReadOnlyList<DemoNode> Nodes => _nodes;

    /// <summary>The server the demo started itself, if it did (only that one may be restarted).</summary>
    public LocalPostgresServer? Server { get; private set; }

    /// <summary>The connection string to the server itself (not through a proxy).</summary>
    public string Connection { get; private set; } = "";

    public string Namespace { get; private set; } = "";

    /// <summary>The singleton's advisory lock key.</summary>
    public long Key { get; private set; }

    /// <summary>Where the node logs, the child script and the journal are.</summary>
    public string WorkDir { get; private set; } = "";

    /// <summary>Every child's life, appended by the children themselves.</summary>
    public LifeJournal Journal { get; private set; } = null!;

    public DemoNode Node(string id) => _nodes.Single(n => n.Id == id);

    /// <summary>Starts (or connects to) the server, and prepares the proxies and nodes; false when it cannot (said why).</summary>
    public async Task<bool> SetUpAsync(CancellationToken cancellationToken)
    {
        WorkDir = Directory.CreateTempSubdirectory("highlander-demo-").FullName;
        Journal = new LifeJournal(Path.Combine(WorkDir, "child.log"));
        var script = Path.Combine(WorkDir, "child.sh");
        await LifeJournal.WriteChildScriptAsync(script, cancellationToken).ConfigureAwait(false);
        if (external is not null)
        {
            Connection = external.ConnectionString;
            view.SetServer($"{external.Display} (from {external.Source})");
        }
        else
        {
            view.SetStep("starting a throwaway PostgreSQL (LocalPostgresServer)");
            try
            {
                Server = await LocalPostgresServer.StartAsync(cancellationToken: cancellationToken).ConfigureAwait(false);
            }
            catch (InvalidOperationException ex)
            {
                Diagnostics.Say.Error("demo", $"cannot start a throwaway PostgreSQL: {ex.Message}\nInstall PostgreSQL (e.g. apt-get install postgresql) or give --connection.");
                return false;
            }

            Connection = Server.ConnectionString;
            view.SetServer($"{ConnectionResolver.Describe(Connection)} (throwaway PostgreSQL {Server.ServerVersion})");
        }

        var target = new NpgsqlConnectionStringBuilder(Connection);
        if (string.IsNullOrEmpty(target.Host) || target.Host.Contains(',', StringComparison.Ordinal) || target.Host.StartsWith('/'))
        {
            Diagnostics.Say.Error("demo", "the demo needs a single TCP host to put its fault proxies in front of (not a unix socket or a host list)");
            return false;
        }

        await ProcessLauncher.Shared.WarmUpAsync().ConfigureAwait(false);
        Namespace = "demo-" + Guid.NewGuid().ToString("N")[..8];
        Key = SingletonKey.Derive(Namespace, SingletonName);
        var fencing = Server is not null; // never create tables in a database the demo does not own
        var self = SelfCommand();
        foreach (var id in NodeIds)
        {
            var proxy = FaultProxy.Start(target.Host, target.Port);
            var environment = new Dictionary<string, string?>
            {
                // Not on the command line: a password would show in ps.
                [ConnectionResolver.EnvironmentVariable] = new NpgsqlConnectionStringBuilder(proxy.ConnectionString(Connection)) { Timeout = 5 }.ConnectionString,
            };
            foreach (var (name, value) in Journal.ChildEnvironment())
            {
                environment[name] = value;
            }

            _nodes.Add(new DemoNode(
                id,
                proxy,
                _ => new LaunchSpec(self.FileName, [
                    .. self.Prefix, "run", "--name", SingletonName, "--namespace", Namespace, "--node-id", id,
                    "--lease", NodeLease, "--heartbeat", "500ms", "--stop-timeout", "1s", "--safety-margin", "500ms", "--restart-delay", "200ms",
                    .. fencing ? new[] { "--fencing" } : [], "--log-level", "information", "--log-format", "json",
                    "--", ProcessLauncher.FindProgram("sh") ?? "/bin/sh", script])
                {
                    RedirectOutput = true,
                    Environment = environment,
                },
                onNodeLine,
                Path.Combine(WorkDir, id + ".log")));
        }

        view.Event($"namespace {Namespace}; lease {NodeLease}, heartbeat 500ms, stop timeout 1s, safety margin 500ms{(fencing ? ", fencing on" : "")}; files in {WorkDir}");
        return true;
    }

    /// <summary>Heals every proxy, stops every node (SIGTERM, then SIGKILL), the proxies and the server; keeps the files if asked.</summary>
    public async Task CleanUpAsync(bool keepFiles)
    {
        foreach (var node in _nodes)
        {
            try
            {
                node.Proxy.SetMode(ProxyMode.Pass);
            }
            catch (ObjectDisposedException)
            {
            }

            node.CutOff = false;
            if (node.IsRunning)
            {
                node.Fate = "stopped (end of demo)";
                node.Signal(Native.SigTerm);
            }
        }

        foreach (var node in _nodes)
        {
            if (await node.WaitForExitAsync(TimeSpan.FromSeconds(8)).ConfigureAwait(false) is null && node.Process is { HasExited: false })
            {
                node.Signal(Native.SigKill);
                await node.WaitForExitAsync(TimeSpan.FromSeconds(2)).ConfigureAwait(false);
            }
        }

        foreach (var node in _nodes)
        {
            await node.Proxy.DisposeAsync().ConfigureAwait(false);
        }

        if (Server is not null)
        {
            await Server.DisposeAsync().ConfigureAwait(false);
        }

        if (!keepFiles && WorkDir.Length > 0)
        {
            try
            {
                Directory.Delete(WorkDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>How to start this same tool: the apphost itself, or <c>dotnet highlander.dll</c>.</summary>
    internal static (string FileName, string[] Prefix) SelfCommand()
    {
        var processPath = Environment.ProcessPath ?? throw new InvalidOperationException("Cannot tell which program this is (no process path).");
        var assembly = typeof(DemoCluster).Assembly.Location;
        return Path.GetFileNameWithoutExtension(processPath) == "dotnet" && assembly.Length > 0
            ? (processPath, [assembly])
            : (processPath, []);
    }
}
