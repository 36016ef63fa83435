using System.Runtime.CompilerServices;

// The test kit (test/HighlanderPG.TestKit, never shipped) starts servers inside its network lab's namespaces and runs
// the lab's commands with the same process helpers.
[assembly: InternalsVisibleTo("HighlanderPG.TestKit")]
