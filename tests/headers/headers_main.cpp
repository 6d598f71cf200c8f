int main() { return 0; }  // the test is that every generated header TU compiled
