using HighlanderPG.Testing.Journal;

namespace HighlanderPG.TestKit.Journal;

/// <summary>
/// A test's own temporary directory holding its <see cref="LifeJournal"/> (<c>life.log</c>) and the journal's child script
/// (<c>child.sh</c>, <see cref="LifeJournal.ChildScript"/>); disposing deletes both.
/// </summary>
public sealed class JournalDirectory : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("highlander-life-").FullName;

    /// <summary>Creates the directory, the (still empty) journal and the child script.</summary>
    public JournalDirectory()
    {
        Journal = new LifeJournal(System.IO.Path.Combine(_directory, "life.log"));
        Script = System.IO.Path.Combine(_directory, "child.sh");
        File.WriteAllText(Script, LifeJournal.ChildScript);
    }

    /// <summary>The journal.</summary>
    public LifeJournal Journal { get; }

    /// <summary>The directory, for files of the test's own.</summary>
    public string Path => _directory;

    /// <summary>The child script's file.</summary>
    public string Script { get; }

    /// <summary>The command that runs the child script (after <c>--</c> for <c>highlander run</c>).</summary>
    public string[] ScriptCommand => ["sh", Script];

    /// <summary>Deletes the directory (best effort).</summary>
    public void Dispose()
    {
        try
        {
            Directory.Delete(_directory, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
