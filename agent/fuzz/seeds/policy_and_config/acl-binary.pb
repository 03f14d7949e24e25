
7
customercustomercordervtgate client 1"app*ops

productproduct%%