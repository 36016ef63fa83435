using System.Diagnostics;
using System.Globalization;
using HighlanderPG.Testing.Journal;
using Spectre.Console;
using Spectre.Console.Rendering;

namespace HighlanderPG.Cli.Demo;

/// <summary>
/// What the demo shows: a live Spectre.Console view (nodes, leader, epoch, recent events) when standard output is a
/// terminal, plain timestamped lines otherwise.
/// </summary>
internal sealed class DemoView(bool live, TimeSpan limit)
{
    private const int EventLines = 14;
    private readonly Lock _gate = new();
    private readonly long _started = Stopwatch.GetTimestamp();
    private readonly Queue<(TimeSpan At, string Text, string Style)> _events = new();
    private readonly Dictionary<string, NodeRow> _nodes = new(StringComparer.Ordinal);
    private string _server = "";
    private string _step = "starting";
    private string? _leader;
    private long? _epoch;
    private IReadOnlyList<string> _followers = [];
    private IReadOnlyList<string> _connected = [];
    private bool _databaseReachable = true;
    private LifeEvent? _child;

    public bool Live { get; } = live;

    public TimeSpan Elapsed => Stopwatch.GetElapsedTime(_started);

    public void SetServer(string text)
    {
        lock (_gate)
        {
            _server = text;
        }
    }

    public void SetStep(string text)
    {
        lock (_gate)
        {
            _step = text;
        }

        Event(text, "bold");
    }

    public void SetNode(string id, int? pid, bool cutOff, string? fate)
    {
        lock (_gate)
        {
            _nodes[id] = new NodeRow(pid, cutOff, fate);
        }
    }

    public void SetLeader(string? leader, long? epoch, IReadOnlyList<string> followers, IReadOnlyList<string> connected, bool reachable)
    {
        lock (_gate)
        {
            _connected = connected;
            _leader = leader;
            _epoch = epoch;
            _followers = followers;
            _databaseReachable = reachable;
        }
    }

    public void SetChild(LifeEvent? child)
    {
        lock (_gate)
        {
            _child = child;
        }
    }

    /// <summary>Adds an event: to the live view's list, or as a plain line.</summary>
    public void Event(string text, string style = "")
    {
        var at = Elapsed;
        lock (_gate)
        {
            _events.Enqueue((at, text, style));
            while (_events.Count > EventLines)
            {
                _events.Dequeue();
            }

            if (!Live)
            {
                Console.Out.WriteLine($"[{Format(at)}] {text}");
                Console.Out.Flush();
            }
        }
    }

    public IRenderable Render()
    {
        lock (_gate)
        {
            var header = new Grid().AddColumn().AddColumn(new GridColumn().RightAligned());
            header.AddRow(
                new Markup($"[bold]HighlanderPG demo[/]  [grey]{Markup.Escape(_server)}[/]"),
                new Markup($"[grey]{Format(Elapsed)} / {Format(limit)}[/]"));
            header.AddRow(new Markup($"[yellow]{Markup.Escape(_step)}[/]"), new Markup(""));

            var nodes = new Table().Border(TableBorder.Rounded).Expand();
            foreach (var column in new[] { "node", "process", "connection", "role", "child" })
            {
                nodes.AddColumn(column);
            }

            foreach (var (id, row) in _nodes.OrderBy(n => n.Key, StringComparer.Ordinal))
            {
                var role = !_databaseReachable ? "[grey]database unreachable[/]"
                    : _leader == id ? "[green bold]LEADER[/]" + (_epoch is { } epoch ? $" [grey](epoch {epoch})[/]" : "")
                    : row.Pid is null ? ""
                    : _followers.Contains(id) ? "follower (waiting on the lock)"
                    : _connected.Contains(id) ? "connected"
                    : "[grey]connecting…[/]";
                var child = _child is { } c && c.Node == id ? $"[green]running[/] pid {c.Pid}" : "";
                nodes.AddRow(
                    new Markup(Markup.Escape(id)),
                    new Markup(row.Pid is { } pid ? $"pid {pid}" : $"[red]{Markup.Escape(row.Fate ?? "down")}[/]"),
                    new Markup(row.CutOff ? "[red bold]CUT OFF[/] (blackhole)" : "proxy: pass"),
                    new Markup(role),
                    new Markup(child));
            }

            var events = new Table().Border(TableBorder.None).HideHeaders().AddColumn(new TableColumn("t").Width(8)).AddColumn("event");
            foreach (var (at, text, style) in _events)
            {
                events.AddRow(new Markup($"[grey]{Format(at)}[/]"), new Markup(style.Length == 0 ? Markup.Escape(text) : $"[{style}]{Markup.Escape(text)}[/]"));
            }

            return new Rows(header, nodes, new Panel(events).Header("recent events").Border(BoxBorder.Rounded).Expand());
        }
    }

    internal static string Format(TimeSpan time) =>
        time.TotalMinutes >= 1
            ? $"{(int)time.TotalMinutes}:{time.Seconds:00}.{time.Milliseconds / 100}"
            : time.TotalSeconds.ToString("0.0", CultureInfo.InvariantCulture) + "s";

    private sealed record NodeRow(int? Pid, bool CutOff, string? Fate);
}
