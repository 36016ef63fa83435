namespace HighlanderPG.Cli.Tests.Infrastructure;

/// <summary>The environment of a <c>highlander</c> node whose command is the journal's child script.</summary>
public static class JournalEnvironment
{
    /// <summary>How long each of the script child's grandchildren naps: longer than any test, so a grandchild outlives nothing by itself.</summary>
    public static readonly TimeSpan Nap = TimeSpan.FromSeconds(300);

    /// <summary>The script's variables (journal, lock, nap; stubborn if asked) and <c>HIGHLANDER_CONNECTION</c>.</summary>
    public static IReadOnlyDictionary<string, string> For(JournalDirectory directory, string connectionString, bool stubborn = false) =>
        new Dictionary<string, string>(directory.Journal.ChildEnvironment(Nap, stubborn)) { ["HIGHLANDER_CONNECTION"] = connectionString };

    /// <summary>
    /// A shell line that journals a start of the running command, in the journal's own line format (for commands that are
    /// not the journal's script).
    /// </summary>
    public const string StartLine = "echo \"start $HIGHLANDER_NODE $HIGHLANDER_NAME $$ $(date +%s%N) - record\" >> \"$LIFE_JOURNAL\"";
}
