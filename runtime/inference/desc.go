package inference

import "google.golang.org/grpc"

// ServiceDescReadingInfer is GRPCInferenceService's description with ModelInfer served
// by infer as a stream handler, while the other five methods stay unary. On the wire
// nothing changes (a unary call is a stream of one message each way, and clients keep
// calling ModelInfer as unary), but grpc-go reads a unary request whole before any
// handler or interceptor runs, while a stream handler runs first and reads the request
// itself with RecvMsg: edgeward-runtime uses that to bound how many ModelInfer messages
// are being read at once. srv must implement GRPCInferenceServiceServer.
func ServiceDescReadingInfer(infer grpc.StreamHandler) *grpc.ServiceDesc {
	return &grpc.ServiceDesc{
		ServiceName: "inference.GRPCInferenceService",
		HandlerType: (*GRPCInferenceServiceServer)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: "ServerLive", Handler: _GRPCInferenceService_ServerLive_Handler},
			{MethodName: "ServerReady", Handler: _GRPCInferenceService_ServerReady_Handler},
			{MethodName: "ModelReady", Handler: _GRPCInferenceService_ModelReady_Handler},
			{MethodName: "ServerMetadata", Handler: _GRPCInferenceService_ServerMetadata_Handler},
			{MethodName: "ModelMetadata", Handler: _GRPCInferenceService_ModelMetadata_Handler},
		},
		Streams:  []grpc.StreamDesc{{StreamName: "ModelInfer", Handler: infer}},
		Metadata: "grpc_predict_v2.proto",
	}
}
