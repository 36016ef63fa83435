using System.Diagnostics;

namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>
/// A file that every test child appends its life to (one line per event; appends are atomic and ordered, so file order is
/// time order across processes), and the child that writes it: a shell that takes a kernel lock (<c>flock</c>) first, so
/// a child that starts while another is still alive writes <c>overlap</c>, and that starts a grandchild (<c>sleep</c>).
/// </summary>
public sealed class LifeFile : IDisposable
{
    private const string ChildScript = """
        exec 9>>"$LIFE.lock"
        if ! flock -n 9; then echo "overlap $HIGHLANDER_NODE $$" >> "$LIFE"; flock 9; fi
        echo "start $HIGHLANDER_NODE $$ ${HIGHLANDER_FENCING_TOKEN:-none} $HIGHLANDER_NAME" >> "$LIFE"
        trap 'echo "stop $HIGHLANDER_NODE $$" >> "$LIFE"; exit 0' TERM
        sleep 300 9>&- &
        echo "grandchild $HIGHLANDER_NODE $!" >> "$LIFE"
        wait
        """;

    /// <summary>The same, but it ignores SIGTERM (and so do its sleeps): only SIGKILL ends it.</summary>
    private const string StubbornScript = """
        exec 9>>"$LIFE.lock"
        if ! flock -n 9; then echo "overlap $HIGHLANDER_NODE $$" >> "$LIFE"; flock 9; fi
        echo "start $HIGHLANDER_NODE $$ stubborn" >> "$LIFE"
        trap '' TERM
        while :; do sleep 0.2 9>&-; done
        """;

    private readonly string _directory = Directory.CreateTempSubdirectory("highlander-cli-test-").FullName;

    public LifeFile()
    {
        Path = System.IO.Path.Combine(_directory, "life.log");
        Script = System.IO.Path.Combine(_directory, "child.sh");
        File.WriteAllText(Script, ChildScript);
        File.WriteAllText(System.IO.Path.Combine(_directory, "stubborn.sh"), StubbornScript);
    }

    public string Path { get; }

    /// <summary>The child's script; run it with <c>sh</c> and LIFE set (see <see cref="Environment"/>).</summary>
    public string Script { get; }

    public IReadOnlyDictionary<string, string> Environment(string connectionString) =>
        new Dictionary<string, string> { ["LIFE"] = Path, ["HIGHLANDER_CONNECTION"] = connectionString };

    /// <summary>The command after <c>--</c>.</summary>
    public string[] Command => ["sh", Script];

    /// <summary>A command that ignores SIGTERM.</summary>
    public string[] StubbornCommand => ["sh", System.IO.Path.Combine(_directory, "stubborn.sh")];

    public IReadOnlyList<LifeLine> Lines()
    {
        if (!File.Exists(Path))
        {
            return [];
        }

        using var stream = new FileStream(Path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd()
            .Split('\n', StringSplitOptions.RemoveEmptyEntries)
            .Select((line, i) => (Parts: line.Split(' '), Index: i))
            .Where(l => l.Parts.Length >= 3)
            .Select(l => new LifeLine(l.Index, l.Parts[0], l.Parts[1], int.Parse(l.Parts[2]), l.Parts.Length > 3 ? l.Parts[3] : null))
            .ToList();
    }

    /// <summary>Waits for the first line from <paramref name="after"/> on matching (polls the file: it is written by other processes).</summary>
    public async Task<LifeLine> WaitAsync(Func<LifeLine, bool> match, int after = 0, TimeSpan? timeout = null, string? what = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(30);
        var watch = Stopwatch.StartNew();
        while (true)
        {
            if (Lines().Skip(after).FirstOrDefault(match) is { } found)
            {
                return found;
            }

            if (watch.Elapsed > limit)
            {
                throw new TimeoutException($"Timed out after {limit} waiting for {what ?? "a line"}. Life so far:\n{Describe()}");
            }

            await Task.Delay(50);
        }
    }

    public Task<LifeLine> WaitStartedAsync(string node, int after = 0, TimeSpan? timeout = null) =>
        WaitAsync(l => l.Kind == "start" && l.Node == node, after, timeout, $"a child to start on {node}");

    public void AssertNoOverlap() =>
        Assert.False(Lines().Any(l => l.Kind == "overlap"), "Two children ran at once:\n" + Describe());

    public string Describe() => string.Join("\n", Lines().Select(l => $"  #{l.Index} {l.Kind} {l.Node} {l.Pid} {l.Extra}"));

    public void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>One line of a <see cref="LifeFile"/>: start/stop/overlap/grandchild, the node, a pid, and the fencing token on starts.</summary>
public sealed record LifeLine(int Index, string Kind, string Node, int Pid, string? Extra);

/// <summary>Waits on process state from outside (there is no event for another process's exit).</summary>
public static class ProcessWatch
{
    public static async Task AssertGoneAsync(int pid, string what, TimeSpan? timeout = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(5);
        var watch = Stopwatch.StartNew();
        while (HighlanderPG.Cli.Processes.Native.ProcessAlive(pid))
        {
            Assert.True(watch.Elapsed < limit, $"{what} (pid {pid}) is still alive after {limit}");
            await Task.Delay(25);
        }
    }
}
